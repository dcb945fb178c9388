"""A miniature zero-shot segmentation benchmark that runs the whole OTSeg method on a laptop CPU.

`world` generates the data (images, labels, captions, a seen/unseen split), `tiny_clip` pretrains a small CLIP
on the captions, `presets` holds the model configs and `run` ties it together behind `otseg demo`.
"""
