// CUDA runtime errors as ds3::Error (host code of the CUDA backend).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "runtime/error.h"

namespace ds3::cuda {

inline void cu_check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw Error("cuda", std::string(what) + " failed: " + cudaGetErrorString(e));
}

}  // namespace ds3::cuda

#define DS3_CU(call) ::ds3::cuda::cu_check((call), #call)
