"""``python -m xcv_batch browse OUT``: a read-only local web page to sort, filter and compare a run's maps.

index.py reads the committed rows and answers the list's questions (order, filter, page, ranks, disagreement);
render.py draws maps as ``show`` does and caches the PNGs; pages.py writes the HTML; server.py serves it on the
standard library's threading HTTP server. Nothing here writes into OUT.
"""
