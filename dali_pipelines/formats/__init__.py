"""Dataset formats, one class each (`base.DatasetFormat`): how a path of the format is recognized and listed,
how a pipeline reads its encoded images, labels and masks, where its masks are and what its labels allow.
`registry.FORMATS` lists them; `dali_pipelines.dataset.resolve_dataset` picks one by name or by looking.
"""
