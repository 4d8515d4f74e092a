// The CUDA runtime version the extension was compiled with (e.g. 13000), behind the
// ssir_fast::cuda_version() op; ssir_fast/_extension.py compares it with torch's CUDA.
#include <cuda_runtime_api.h>

int ssir_fast_cuda_runtime_version_compiled() { return CUDART_VERSION; }
