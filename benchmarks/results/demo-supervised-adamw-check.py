"""Issue 17's check of what labels reach on the demo data in the demo's budget (186 steps, batch 64, 32 px).

A plain torchvision pipeline (RandomResizedCrop(32, 0.25-1) + flip) and AdamW (lr 2e-3, weight decay 0.05,
one-cycle) train the default-init ResNet18 and a linear head with cross-entropy; top-1 on `val` is printed.
Measured 2026-12-02 on the 2-core VM: 27.0 % (the experiment's SGD supervised reference: 23.2 %). Run from the
repository root after `make demo` has generated the demo dataset: `python benchmarks/results/demo-supervised-adamw-check.py`.
"""
import torch, torchvision, time
from torchvision import transforms as T
from relic_fast.models import build_encoder
torch.manual_seed(0); torch.set_num_threads(1)
root = "/root/.cache/relic-fast/demo-data/n2000-px96-seed0-c0.7"
norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
train_t = T.Compose([T.RandomResizedCrop(32, scale=(0.25, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(), norm])
eval_t = T.Compose([T.Resize(32), T.ToTensor(), norm])
tr = torchvision.datasets.ImageFolder(f"{root}/train", train_t)
va = torchvision.datasets.ImageFolder(f"{root}/val", eval_t)
dl = torch.utils.data.DataLoader(tr, batch_size=64, shuffle=True, drop_last=True, num_workers=1)
enc = build_encoder("resnet18", zero_init_residual=False)
model = torch.nn.Sequential(enc, torch.nn.Linear(enc.feature_dim, 10))
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
steps, step = 186, 0
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
t = time.time()
while step < steps:
    for x, y in dl:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step(); step += 1
        if step == steps: break
model.eval(); correct = 0
with torch.no_grad():
    for x, y in torch.utils.data.DataLoader(va, batch_size=250):
        correct += (model(x).argmax(1) == y).sum().item()
print(f"AdamW supervised, 186 steps: val {100*correct/len(va):.1f}% loss {loss.item():.3f} in {time.time()-t:.0f}s")
