/* A libcuda.so.1 with no device behind it.

   CUDA extensions (sgl-kernel, FlashMLA, DeepEP, vLLM's _C_stable_libtorch) link the driver,
   libcuda.so.1, which a machine without a GPU does not have, so they cannot even be loaded and
   the frameworks that import them at start-up stop there. Loaded first (RTLD_GLOBAL, soname
   libcuda.so.1), this library satisfies that dependency; every entry point fails with
   CUDA_ERROR_NO_DEVICE, so nothing can ever run on it. Revati replaces the kernels at the
   frameworks' own seams; this only lets their modules import. Built by setup.py, loaded by
   revati.adapters.cuda.nodriver. */

#define CUDA_SUCCESS 0
#define CUDA_ERROR_NO_DEVICE 100

typedef int CUresult;

#define NO_DEVICE(name) \
    CUresult name(void) { return CUDA_ERROR_NO_DEVICE; }

/* The driver symbols that the extensions of sglang-kernel 0.4.10, sgl-flash-mla 1.0.0 and
   sgl-deep-ep 0.1.2 import (nm -D --undefined-only), and the usual entry points. */
NO_DEVICE(cuInit)
NO_DEVICE(cuDeviceGet)
NO_DEVICE(cuDeviceGetCount)
NO_DEVICE(cuGetProcAddress)
NO_DEVICE(cuGetProcAddress_v2)
NO_DEVICE(cuPointerGetAttribute)
NO_DEVICE(cuCtxFromGreenCtx)
NO_DEVICE(cuCtxPopCurrent_v2)
NO_DEVICE(cuCtxPushCurrent_v2)
NO_DEVICE(cuDevResourceGenerateDesc)
NO_DEVICE(cuDevSmResourceSplitByCount)
NO_DEVICE(cuDeviceGetDevResource)
NO_DEVICE(cuGreenCtxCreate)
NO_DEVICE(cuGreenCtxDestroy)
NO_DEVICE(cuGreenCtxGetDevResource)
NO_DEVICE(cuStreamCreate)

CUresult cuDriverGetVersion(int *version) {
    if (version) *version = 0;
    return CUDA_ERROR_NO_DEVICE;
}

CUresult cuGetErrorString(CUresult error, const char **str) {
    (void)error;
    if (str) *str = "no CUDA device (Revati: virtual GPUs have no driver)";
    return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char **str) {
    (void)error;
    if (str) *str = "CUDA_ERROR_NO_DEVICE";
    return CUDA_SUCCESS;
}
