"""Infrastructure every layer above may use and that knows nothing of architecture search: errors
(:mod:`.errors`), config coercion (:mod:`.config`, a leaf), the option groups every run shares
(:mod:`.options`), runtime (device, precision, seeds: :mod:`.runtime`), the console (:mod:`.console`),
run directories and their lock (:mod:`.rundir`, :mod:`.lock`), torchrun (:mod:`.distributed`) and a
step replayed as a CUDA graph (:mod:`.graphs`)."""
