"""Task metrics of a trained model on held-out data (`python -m cm3leon_jax.evaluate`).

    fid.py         Fréchet distance (closed form checked in tests) on features of the project's
                   own image encoder (the retrieval bi-encoder's image tower; VQ-GAN fallback)
    cider.py       CIDEr-D (the COCO caption metric, reimplemented in numpy)
    attributes.py  what the `shapes` metadata lets us judge: objects in an image (verifier) and
                   attribute words in a caption against the ground-truth scene
    vqa.py         answer normalisation for exact-match VQA accuracy
    tasks.py       one evaluation: text-to-image, captioning, VQA, editing on the test split
    table.py       the paper-style ablation grid (retrieval, CFG, CD-K vs top-p, pretrain vs SFT)
                   rendered as docs/RESULTS.md
"""
