"""The file readers below the model, one module each; nothing here runs code stored in a file, and nothing here
knows the segmentor (the files that hold a whole model are opened one layer up, in `otseg.model_files`).

- `openai_clip` (with `torchscript`, the restricted reader of TorchScript archives): OpenAI CLIP weights;
- `class_embeddings`: class text-embedding files (`.npy`, `.pt`, `.safetensors`);
- `torch_pickle`: `safe_torch_load`, the one reader of `torch.save` files;
- `state_dict`: the one check that a state dict fits a model, and the SHA-256 of tensors.
"""
