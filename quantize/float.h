// Scalar conversions between f32 and the 8/16-bit float formats of the releases and of
// GGUF files. Exact: f16/bf16 round to nearest even, NaN stays NaN; e4m3 is the OCP
// "fn" variant used by DeepSeek's FP8 weights (no infinities, 0x7f/0xff are NaN).
#pragma once

#include <cstdint>
#include <cstring>

namespace ds3 {

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float f32_from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float bf16_to_f32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float fp8_e4m3_to_f32(uint8_t v);

}  // namespace ds3
