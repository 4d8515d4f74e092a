// Empty Python module ssir_fast._C_cuda: importing it loads the CUDA kernel library, whose static
// STABLE_TORCH_LIBRARY initialisers register the CUDA kernels (ssir_fast/_extension.py imports it
// only under a CUDA torch of the same CUDA major version).
#include <Python.h>

extern "C" {
PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
