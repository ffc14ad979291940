"""The offline report: actwatch's event files drawn as one self-contained HTML page, no TensorBoard.

Every directory under LOGDIR holding `events.out.tfevents.*` files is a run, read with
`actwatch.events.runs` (through the one reader of runs, `actwatch.events.reader`), drawn by
`figures` and laid out by `page`; runs are shown side by side. No Keras import.

```python
actwatch.report.write_report("logs", "reports/report.html")
```
"""

from __future__ import annotations

from actwatch.events.runs import RunLog, find_runs, read_run
from actwatch.report.page import write_report

__all__ = ["RunLog", "find_runs", "read_run", "write_report"]
