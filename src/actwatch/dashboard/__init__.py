"""The actwatch dashboard: a TensorBoard plugin (the `actwatch` tab) over actwatch's events.

`plugin.ActwatchPlugin` is registered under the entry point group `tensorboard_plugins`, so
`tensorboard --logdir logs` shows the tab whenever actwatch is installed. The data API is
documented in `plugin`; `events_index` indexes the events files it serves from.
"""
