"""Offline staging (``medlm-prepare stage DIR``): datasets in their published formats, tokenizer
files and pretrained weights, fetched on a machine with internet into one directory that compute
nodes without internet read through ``MEDLM_DATA_DIR``, ``TIKTOKEN_CACHE_DIR`` and
``model.pretrained``.

- :mod:`.stage`: the plan and the run, and the environment lines that point a run at DIR;
- :mod:`.data_files`: each dataset's Hub source and the files its DataModule reads;
- :mod:`.model_files`, :mod:`.tokenizer_files`: weights (safetensors only) and tokenizer files;
- :mod:`.hub`: revisions pinned to commits, and Hub failures as one line;
- :mod:`.manifest`: ``DIR/manifest.json`` and writing an item's files all or nothing.
"""
