"""Reports over any range: the pure core of ``GET /api/account/{id}/csat/report``.

EXTENSIONS.md section 7. No I/O, no clock reads (``now`` is passed in), no framework:

- :mod:`~csatdist.report.periods` — calendar periods of any IANA zone (hour, day, ISO week,
  month, total), and whether 15-minute storage can count them exactly;
- :mod:`~csatdist.report.params` — the request's parameters into a :class:`ReportQuery`, with a
  precise 400 for every broken rule and the limits that bound a reply;
- :mod:`~csatdist.report.metrics` — ``M`` with its 95 % Wilson score interval;
- :mod:`~csatdist.report.assembly` — the seam to storage (:class:`SumsRequest` in,
  :class:`SumRow` out) and the JSON body;
- :mod:`~csatdist.report.csv_rows` — the same report as CSV.

A route does::

    query = parse_report_query(request.query_params, now_ms=clock(), history_days=…)
    report = build_report(account_id, query, store.report_sums)
    return report_body(report)            # or report_csv(report, skill_names=…, agent_names=…)
"""

from csatdist.report.assembly import (
    GroupLimit,
    Report,
    ReportSums,
    SumRow,
    SumsRequest,
    TooManyGroups,
    assemble_report,
    build_report,
    report_body,
    sums_request,
)
from csatdist.report.csv_rows import CSV_COLUMNS, report_csv, report_csv_rows
from csatdist.report.metrics import Z_95, report_metrics, wilson_interval
from csatdist.report.params import (
    DEFAULT_HISTORY_DAYS,
    MAX_FUTURE_MS,
    MAX_PERIODS,
    MAX_SERIES_ENTRIES,
    Compare,
    ReportQuery,
    parse_report_query,
)
from csatdist.report.periods import (
    RESOLUTION_MS,
    Granularity,
    Period,
    boundaries,
    check_resolution,
    first_instant_of_date,
    periods,
)

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_HISTORY_DAYS",
    "MAX_FUTURE_MS",
    "MAX_PERIODS",
    "MAX_SERIES_ENTRIES",
    "RESOLUTION_MS",
    "Z_95",
    "Compare",
    "Granularity",
    "GroupLimit",
    "Period",
    "Report",
    "ReportQuery",
    "ReportSums",
    "SumRow",
    "SumsRequest",
    "TooManyGroups",
    "assemble_report",
    "boundaries",
    "build_report",
    "check_resolution",
    "first_instant_of_date",
    "parse_report_query",
    "periods",
    "report_body",
    "report_csv",
    "report_csv_rows",
    "report_metrics",
    "sums_request",
    "wilson_interval",
]
