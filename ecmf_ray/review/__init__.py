"""``ecmf review``: a local web page on which a person decides the run's review queue.

:mod:`ecmf_ray.review.queue` reads what the page shows, :mod:`ecmf_ray.review.decisions` keeps the
decisions in ``final/reviewed.csv`` (what ``finalize.relabel.reviewed`` reads), and
:mod:`ecmf_ray.review.server` serves the page (``static/``: plain HTML, JavaScript and CSS, no build step).
"""
