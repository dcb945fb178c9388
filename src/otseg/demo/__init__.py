"""A miniature zero-shot segmentation benchmark that runs the whole OTSeg method on a laptop CPU: an application of
the library, which imports it and is imported by nothing in it (only the command line's `otseg demo`).

`world` generates the data (images, labels, captions, a seen/unseen split), `tiny_clip` pretrains a small CLIP
on the captions, `card` measures the world card, `presets` holds the model configs and recipe, `training` trains one
run; `jobs`, `scheduler`, `scoring`, `table`, `panels`, `run` and `seeds` make `otseg demo` of them (`command`: its
arguments); `pretrained` and `rebuild` keep the shipped weights reproducible.
"""
