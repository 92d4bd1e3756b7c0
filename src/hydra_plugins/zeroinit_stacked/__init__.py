"""Hydra launcher plugin `stacked`: a -m sweep's runs that share data, model and training
loop train together as one stacked model (zeroinit.stacked). Hydra finds launchers only in
the `hydra_plugins` namespace, hence this package; the work is done in zeroinit.stacked."""
