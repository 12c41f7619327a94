"""The compile flags (`train.compile_mode`, `compile_scope`, `compile_cache`) reach torch.compile and the
environment, and regional compilation of the residual blocks computes what the eager network does."""

import dataclasses
import os

import pytest
import torch
from torch import nn

from relic_fast import compiling
from relic_fast.compiling import CACHE_ENV, compile_cache_folder, compile_step, residual_blocks
from relic_fast.config import ConfigError, ModelConfig, load_config
from relic_fast.environment import compiled_graph_count
from relic_fast.models import build_networks

from tests.support.tiny_recipe import DEMO_RECIPE, TINY_OVERRIDES

TINY_MODEL = ModelConfig(encoder="resnet18", small_stem=True, projector_hidden=32, predictor_hidden=32,
                         embedding_dim=16)


class CompileCalls:
    """Records every torch.compile / nn.Module.compile call (kwargs and what was compiled) without compiling."""

    def __init__(self, monkeypatch):
        self.functions: list[dict] = []
        self.modules: list[tuple[nn.Module, dict]] = []
        monkeypatch.setattr(torch, "compile", self._compile)
        monkeypatch.setattr(nn.Module, "compile", lambda module, **kwargs: self.modules.append((module, kwargs)))

    def _compile(self, function, **kwargs):
        self.functions.append(kwargs)
        return function


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune"])
def test_forward_scope_compiles_the_whole_forward_with_the_mode(monkeypatch, mode):
    calls = CompileCalls(monkeypatch)
    online, target = build_networks(TINY_MODEL)
    forward = compile_step(len, [online, target], mode=mode, scope="forward")
    assert forward is len and not calls.modules
    expected = {"dynamic": False, "backend": "inductor"} | ({} if mode == "default" else {"mode": mode})
    assert calls.functions == [expected]


def test_blocks_scope_compiles_every_residual_block_and_nothing_else(monkeypatch):
    calls = CompileCalls(monkeypatch)
    online, target = build_networks(TINY_MODEL)
    with torch._dynamo.config.patch(recompile_limit=8):  # restored afterwards
        forward = compile_step(len, [online, target], mode="reduce-overhead", scope="blocks")
        assert torch._dynamo.config.recompile_limit == compiling.BLOCK_RECOMPILE_LIMIT
    assert forward is len and not calls.functions  # the forward itself stays eager
    compiled = [module for module, _ in calls.modules]
    assert compiled == residual_blocks([online, target]) and len(compiled) == 2 * 8  # resnet18: 8 per network
    assert all(kwargs == {"dynamic": False, "backend": "inductor", "mode": "reduce-overhead"}
               for _, kwargs in calls.modules)


def test_blocks_scope_matches_eager_and_shares_graphs_between_blocks(one_thread):
    """A real regional compile (Dynamo with the eager backend: no C++ compile): same outputs, and fewer
    graphs than blocks, since blocks of one shape share a graph."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    online, target = build_networks(TINY_MODEL)
    x = torch.randn(2, 3, 16, 16)
    expected = online(x)[1]
    before = compiled_graph_count()
    with torch._dynamo.config.patch(recompile_limit=8):
        compile_step(len, [online, target], scope="blocks", backend="eager")
        torch.testing.assert_close(online(x)[1], expected)
    graphs = compiled_graph_count() - before
    assert 1 <= graphs < len(residual_blocks([online])), graphs
    torch._dynamo.reset()


def test_compile_cache_folder_is_relative_to_the_run(tmp_path):
    assert compile_cache_folder("", tmp_path) is None
    assert compile_cache_folder("compile-cache", tmp_path) == tmp_path / "compile-cache"
    assert compile_cache_folder("/shared/cache", tmp_path) == compiling.Path("/shared/cache")


def test_trainer_passes_the_flags_on_and_sets_the_cache_before_compiling(tiny_demo, tmp_path, monkeypatch):
    from relic_fast.trainer import Trainer

    monkeypatch.delenv(CACHE_ENV, raising=False)  # restored after the test
    seen = {}

    def compile_step_spy(forward, networks, **options):
        seen.update(options, cache=os.environ.get(CACHE_ENV), networks=len(networks))
        return forward

    monkeypatch.setattr("relic_fast.step.compile_step", compile_step_spy)  # the one step builder calls it
    config = load_config(DEMO_RECIPE, TINY_OVERRIDES + [
        f"data.path={tiny_demo}", "train.compile=on", "train.compile_mode=reduce-overhead",
        "train.compile_scope=blocks", "train.compile_cache=compile-cache"])
    Trainer(config, tmp_path / "run")
    assert seen == {"mode": "reduce-overhead", "scope": "blocks", "backend": "inductor", "cache": str((tmp_path / "run" / "compile-cache")
                                                                               .resolve()), "networks": 2}
    assert (tmp_path / "run" / "compile-cache").is_dir()


def test_compile_flags_are_validated():
    with pytest.raises(ConfigError, match="compile_scope"):
        load_config(DEMO_RECIPE, ["train.compile_scope=layers"])
    with pytest.raises(ConfigError, match="compile_mode"):
        load_config(DEMO_RECIPE, ["train.compile_mode=fast"])
