// Every ssir_fast operator schema lives here; backend files only hold TORCH_LIBRARY_IMPL blocks.
#include <torch/library.h>

#include "ops.h"

namespace ssir_fast {

int64_t cuda_version() {
#ifdef SSIR_FAST_WITH_CUDA
  return static_cast<int64_t>(ssir_fast_cuda_runtime_version_compiled());
#else
  return -1;
#endif
}

}  // namespace ssir_fast

TORCH_LIBRARY(ssir_fast, m) {
  // CUDA version the extension was compiled with (e.g. 13000), -1 for a CPU-only build.
  m.def("cuda_version() -> int", &ssir_fast::cuda_version);

  // x + epsilon * g / ||g||_2 (norm per sample over all non-batch dims), clipped to
  // [clip_min, clip_max]; bounds are float32 tensors of shape [] or [C] for x of shape [N, C, ...].
  m.def("perturb(Tensor x, Tensor g, float epsilon, Tensor? clip_min, Tensor? clip_max) -> Tensor");
  m.def("perturb_(Tensor(a!) x, Tensor g, float epsilon, Tensor? clip_min, Tensor? clip_max) -> ()");
  m.def("perturb_out(Tensor x, Tensor g, float epsilon, Tensor? clip_min, Tensor? clip_max, "
        "Tensor(a!) out) -> ()");
}
