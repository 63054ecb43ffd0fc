// WeightStore: the named weights a model binds to — zero-copy views on a GGUF file's
// mapping, plus tensors the loader derives at load time (e.g. W_kb / W_vb split from an
// older file's attn_kv_b) or that a test builds in memory. Addresses are stable for the
// store's lifetime, so graphs can hold `const Weight*`.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/graph/graph.h"

namespace ds3 {
namespace gguf {
class File;
}

class WeightStore {
public:
    WeightStore() = default;
    WeightStore(WeightStore&&) = default;
    WeightStore& operator=(WeightStore&&) = default;

    // Views on every tensor of `file` (kept alive by the store).
    static WeightStore from_gguf(std::shared_ptr<const gguf::File> file);

    const Weight* find(std::string_view name) const;  // nullptr when absent
    // The weight `name`, checked against the expected ne (trailing 1s may be omitted);
    // throws Error("model", "<name>: expected {..}, found {..}") or "missing tensor".
    const Weight& get(std::string_view name, const std::vector<int64_t>& ne) const;
    const Weight* get_optional(std::string_view name, const std::vector<int64_t>& ne) const;

    const Weight& add_view(std::string name, TypeId type, const std::vector<int64_t>& ne, const uint8_t* data);
    const Weight& add_owned(std::string name, TypeId type, const std::vector<int64_t>& ne, std::vector<uint8_t> bytes);

    const gguf::File* file() const { return file_.get(); }
    size_t size() const { return map_.size(); }

private:
    std::map<std::string, std::unique_ptr<Weight>, std::less<>> map_;
    std::vector<std::unique_ptr<std::vector<uint8_t>>> owned_;
    std::shared_ptr<const gguf::File> file_;
};

std::string shape_string(const std::vector<int64_t>& ne);

}  // namespace ds3
