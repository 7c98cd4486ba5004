"""Dense retrieval for retrieval-augmented pretraining (CM3leon, RA-CM3).

Read in data-flow order:

* `byte_tokenizer.py` — the retriever's own text tokenizer (UTF-8 bytes + BOS/EOS);
* `encoder.py` — the CLIP-architecture bi-encoder (Flax), Hugging Face `CLIPModel` import;
* `corpus.py` — a split's documents tokenized and embedded in batches;
* `train_encoder.py` — contrastive (symmetric InfoNCE) training on the image-caption pairs;
* `index.py` — the memory bank: ScaNN or exact inner-product search, saved with a manifest;
* `build_index.py` — embeds every training document and builds / saves the index;
* `rules.py` — relevance, modality and diversity rules, query dropout;
* `neighbour_table.py` — the neighbour tables and `compute_neighbours` (search + rules), read by
  data preparation and online retrieval;
* `neighbours.py` — the Beam command that writes a table for every split (for data preparation);
* `retriever.py` — online retrieval and CLIP scores for generation;
* `synthetic.py` — clustered unit vectors for index tests and the benchmark.
"""
