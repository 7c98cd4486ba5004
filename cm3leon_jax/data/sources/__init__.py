"""Raw documents (image + caption, with source and licence), before any tokenizer sees them.

`catalog.py` turns `config.data` into a tfds builder and a split of plain examples, whatever the
source: `shapes/` (the embedded, generated data set and its verifier), `folder.py` (a user's folder
of images + captions.jsonl), a tfds data set by name, or `webdataset.py` (tar shards);
`images.py` decodes a user's image files.
"""
