"""The option groups of ``repdisp.commands.options``, one module per subject: ``grammar`` (the
help formatter and the repeatable-option actions), ``model``, ``data`` (text sources, segments,
sites), ``statistics`` (bins and resampling), ``output`` (result folders, tracking). Import them
through ``repdisp.commands.options``; nothing here imports anything heavy."""
