"""The files that hold a whole model, one module each, above the model they build (the plain file readers they
use sit below it, in `otseg.formats`):

- `otseg_folder`: our model folders (`model.safetensors` + `config.json`), `save_pretrained` / `load_pretrained`;
- `training_checkpoint`: `iter_N.pt`, written and read by `otseg train`, opened for inference here too;
- `reference_pth`: the reference's released mmcv `.pth` checkpoints and their key mapping;
- `open_model`: `load_model`, which tells the model formats apart and opens any of them.
"""
