"""Reports over any range: the pure core of ``GET /api/account/{id}/csat/report``.

EXTENSIONS.md section 7. No I/O, no clock reads, no framework. :mod:`~csatdist.report.periods`
holds the calendar periods of any IANA zone and whether 15-minute storage can count them exactly.
"""
