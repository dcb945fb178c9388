"""Every file format otseg reads or writes, one module each; nothing here runs code stored in a file.

- `otseg_folder`: our model folders (`model.safetensors` + `config.json`), `save_pretrained` / `load_pretrained`;
- `training_checkpoint`: `iter_N.pt` written by `otseg train`;
- `reference_pth`: the reference's released mmcv `.pth` checkpoints and their key mapping;
- `openai_clip` (with `torchscript`, the restricted reader of TorchScript archives): OpenAI CLIP weights;
- `class_embeddings`: class text-embedding files (`.npy`, `.pt`, `.safetensors`);
- `torch_pickle`: `safe_torch_load`, the one reader of `torch.save` files;
- `state_dict`: the one check that a state dict fits a model, and the SHA-256 of tensors;
- `open_model`: `load_model`, which tells the model formats apart and opens any of them.
"""
