#include "runtime/weights.h"

#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

namespace ds3 {

std::string shape_string(const std::vector<int64_t>& ne) {
    std::string s = "{";
    for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "}";
}

namespace {

std::vector<int64_t> dims_of(const Weight& w) {
    return std::vector<int64_t>(w.ne.begin(), w.ne.begin() + w.n_dims);
}

bool same_shape(const Weight& w, const std::vector<int64_t>& ne) {
    for (size_t i = 0; i < 4; ++i) {
        const int64_t want = i < ne.size() ? ne[i] : 1;
        if (w.ne[i] != want) return false;
    }
    return true;
}

}  // namespace

WeightStore WeightStore::from_gguf(std::shared_ptr<const gguf::File> file) {
    WeightStore s;
    for (const gguf::TensorInfo& t : file->tensors()) {
        std::vector<int64_t> ne(t.ne.begin(), t.ne.end());
        s.add_view(t.name, t.type, ne, file->tensor_data(t).data());
    }
    s.file_ = std::move(file);
    return s;
}

const Weight* WeightStore::find(std::string_view name) const {
    auto it = map_.find(name);
    return it == map_.end() ? nullptr : it->second.get();
}

const Weight* WeightStore::get_optional(std::string_view name, const std::vector<int64_t>& ne) const {
    const Weight* w = find(name);
    if (w && !same_shape(*w, ne))
        throw Error("model", std::string(name) + ": expected shape " + shape_string(ne) + ", found " +
                                 shape_string(dims_of(*w)));
    return w;
}

const Weight& WeightStore::get(std::string_view name, const std::vector<int64_t>& ne) const {
    const Weight* w = get_optional(name, ne);
    if (!w) throw Error("model", "missing tensor " + std::string(name) + " (expected shape " + shape_string(ne) + ")");
    return *w;
}

const Weight& WeightStore::add_view(std::string name, TypeId type, const std::vector<int64_t>& ne,
                                    const uint8_t* data) {
    check(!ne.empty() && ne.size() <= 4, "model", name + ": 1 to 4 dimensions expected");
    auto w = std::make_unique<Weight>();
    w->name = name;
    w->type = type;
    w->n_dims = static_cast<int>(ne.size());
    uint64_t n = 1;
    for (size_t i = 0; i < ne.size(); ++i) {
        check(ne[i] > 0, "model", name + ": dimensions must be positive, found " + shape_string(ne));
        w->ne[i] = ne[i];
        n *= static_cast<uint64_t>(ne[i]);
    }
    auto nb = type_nbytes(type, n);
    check(nb.has_value(), "model", name + ": " + std::to_string(n) + " elements are not whole blocks of its type");
    w->nbytes = *nb;
    w->data = data;
    const Weight& ref = *w;
    map_[std::move(name)] = std::move(w);
    return ref;
}

const Weight& WeightStore::add_owned(std::string name, TypeId type, const std::vector<int64_t>& ne,
                                     std::vector<uint8_t> bytes) {
    owned_.push_back(std::make_unique<std::vector<uint8_t>>(std::move(bytes)));
    const Weight& w = add_view(std::move(name), type, ne, owned_.back()->data());
    check(w.nbytes == owned_.back()->size(), "model",
          w.name + ": " + std::to_string(owned_.back()->size()) + " bytes given, " + std::to_string(w.nbytes) +
              " expected");
    return w;
}

}  // namespace ds3
