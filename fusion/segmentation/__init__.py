"""The downstream segmentation protocol: does a fusion method help a segmenter?

``config`` reads the dataset description and the preset (YAML files in ``options/segmentation``),
``protocol`` trains and tests one segmenter per (method, seed) with resumable units, ``report``
writes JSON / CSV / Markdown and the prediction picture. ``scripts/evaluate_segmentation.py`` is
the command line; ``docs/segmentation.md`` the documentation.
"""
