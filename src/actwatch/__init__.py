"""actwatch: watch a CNN's activations while it trains.

`ActivationMonitor` is a Keras callback that writes filter grids, heatmaps, sparsity and
dead-filter statistics to TensorBoard and alerts when filters die. The notebook functions
(`get_activations`, `activation_stats`, `plot_filters`, `plot_heatmaps`) give one-off looks at
any model with the same code. `actwatch.report.write_report` writes the offline HTML report
from the event files.
"""

from . import report as report  # the documented `actwatch.report.write_report`
from ._warnings import ActwatchWarning
from .alerts import Alert
from .callback import ActivationMonitor
from .notebook import activation_stats, get_activations, plot_filters, plot_heatmaps
from .stats import LayerStats

__version__ = "0.1.0.dev0"

__all__ = [
    "ActivationMonitor",
    "ActwatchWarning",
    "Alert",
    "LayerStats",
    "__version__",
    "activation_stats",
    "get_activations",
    "plot_filters",
    "plot_heatmaps",
]
