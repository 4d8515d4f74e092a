"""Adapters to libraries ssir_fast does not depend on; each module imports its library, so import
the module you need (`ssir_fast.integrations.torchmetrics` needs the `torchmetrics` extra)."""
