"""``python -m xcv_batch browse OUT``: a read-only local web page to sort, filter and compare a run's maps.

index.py reads the committed rows and answers the list's questions (order, filter, page, ranks, the metrics'
agreement per image); render.py draws inputs and maps as ``show`` does, a page's worth at a time, and caches the
PNGs; map_agreement.py computes where the maps disagree; pages.py writes the HTML; server.py serves it on the
standard library's threading HTTP server. Nothing here writes into OUT.
"""
