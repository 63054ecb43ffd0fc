#include "runtime/sched/sched.h"

#include <algorithm>
#include <memory>
#include <set>

#include "runtime/error.h"

namespace ds3 {

namespace {

std::string weight_types(const Node& n) {
    std::string s;
    for (const Weight* w : n.w) s += (s.empty() ? "" : ", ") + std::string(type_traits(w->type).name);
    return s.empty() ? "none" : s;
}

}  // namespace

Backend& Scheduler::backend_of_node(const Node& n) const {
    check(n.backend >= 0 && n.backend < static_cast<int>(backends_.size()), "sched",
          n.name + ": node is not placed (call place() first)");
    return *backends_[static_cast<size_t>(n.backend)];
}

Scheduler::Scheduler(std::vector<Backend*> backends, ExpertPlacement placement)
    : backends_(std::move(backends)), placement_(std::move(placement)) {
    check(!backends_.empty(), "sched", "at least one backend is needed");
    for (const auto& layer : placement_.expert_backend)
        for (int b : layer)
            check(b >= 0 && b < static_cast<int>(backends_.size()), "sched",
                  "expert placement names backend " + std::to_string(b) + " but only " +
                      std::to_string(backends_.size()) + " exist");
}

Graph Scheduler::place(const Graph& g) const {
    Graph out;
    std::vector<int> remap(static_cast<size_t>(g.size()), -1);
    const int n_backends = static_cast<int>(backends_.size());
    for (int i = 0; i < g.size(); ++i) {
        Node n = g.node(i);
        for (int& s : n.src) s = remap[static_cast<size_t>(s)];

        const std::vector<int>* experts = nullptr;
        if (n.op == Op::moe_ffn && n.layer >= 0 &&
            n.layer < static_cast<int>(placement_.expert_backend.size()) &&
            !placement_.expert_backend[static_cast<size_t>(n.layer)].empty())
            experts = &placement_.expert_backend[static_cast<size_t>(n.layer)];

        if (experts) {
            check(static_cast<int>(experts->size()) == n.route.n_expert, "sched",
                  n.name + ": expert placement has " + std::to_string(experts->size()) + " entries, layer has " +
                      std::to_string(n.route.n_expert) + " experts");
            // One partial node per backend that holds some of this layer's experts
            // (and that the original node allowed: an already-restricted mask stays so).
            std::vector<Node> parts;
            for (int b = 0; b < n_backends; ++b) {
                Node p = n;
                p.experts.assign(static_cast<size_t>(n.route.n_expert), 0);
                bool any = false;
                for (int e = 0; e < n.route.n_expert; ++e) {
                    bool allowed = n.experts.empty() || n.experts[static_cast<size_t>(e)];
                    if (allowed && (*experts)[static_cast<size_t>(e)] == b) p.experts[static_cast<size_t>(e)] = 1, any = true;
                }
                if (!any) continue;
                p.backend = b;
                if (!backends_[static_cast<size_t>(b)]->supports(p))
                    throw Error("sched", n.name + ": backend " + backends_[static_cast<size_t>(b)]->name() +
                                             " holds experts but does not support weight types " + weight_types(p));
                parts.push_back(std::move(p));
            }
            if (parts.empty()) throw Error("sched", n.name + ": the expert mask selects no expert");
            if (parts.size() == 1) {
                remap[static_cast<size_t>(i)] = out.push(std::move(parts[0]));
                continue;
            }
            const std::string base = n.name;
            std::vector<int> ids;
            for (size_t k = 0; k < parts.size(); ++k) {
                parts[k].name = base + ".part" + std::to_string(k);
                parts[k].output = false;
                ids.push_back(out.push(std::move(parts[k])));
            }
            // Partial sums are added on the primary backend; the last add takes the
            // original name so dumps and fetches see the full result.
            int acc = ids[0];
            for (size_t k = 1; k < ids.size(); ++k) {
                Node a;
                a.op = Op::add;
                a.name = k + 1 == ids.size() ? base : base + ".sum" + std::to_string(k);
                a.rows = n.rows;
                a.cols = n.cols;
                a.src = {acc, ids[k]};
                a.layer = n.layer;
                a.backend = 0;
                a.output = k + 1 == ids.size() && n.output;
                acc = out.push(std::move(a));
            }
            remap[static_cast<size_t>(i)] = acc;
            continue;
        }

        n.backend = -1;
        for (int b = 0; b < n_backends; ++b)
            if (backends_[static_cast<size_t>(b)]->supports(n)) {
                n.backend = b;
                break;
            }
        if (n.backend < 0)
            throw Error("sched", n.name + ": no backend supports op " + op_name(n.op) + " with weight types " +
                                     weight_types(n));
        remap[static_cast<size_t>(i)] = out.push(std::move(n));
    }
    return out;
}

Fetched Scheduler::run(const Graph& g, std::span<const GraphInput> inputs, KvCache* cache,
                       std::span<const int> fetch) const {
    const int n_nodes = g.size();
    // A graph wholly on one backend may run there in one piece (a replayed CUDA graph).
    if (!observer_ && n_nodes > 0 &&
        std::all_of(g.nodes().begin(), g.nodes().end(), [&](const Node& n) { return n.backend == g.node(0).backend; })) {
        Fetched results;
        if (backend_of_node(g.node(0)).run_graph(g, inputs, cache, fetch, results)) return results;
    }
    std::set<int> keep(fetch.begin(), fetch.end());
    // Last consumer of each node, so intermediate buffers are released as soon as
    // possible (a 61-layer graph would otherwise hold every activation at once).
    std::vector<int> last_use(static_cast<size_t>(n_nodes), -1);
    for (int i = 0; i < n_nodes; ++i)
        for (int s : g.node(i).src) last_use[static_cast<size_t>(s)] = i;

    std::vector<std::unique_ptr<Buffer>> bufs(static_cast<size_t>(n_nodes));
    // Copies of a node's output on other backends: (node, backend) → buffer.
    std::map<std::pair<int, int>, std::unique_ptr<Buffer>> copies;
    std::vector<uint8_t> staging;

    auto backend_of = [&](int i) -> Backend& { return backend_of_node(g.node(i)); };

    // The copy of node s's output on backend `to` (made once, staged through the host).
    auto stage = [&](int s, int to) -> Buffer* {
        auto& c = copies[std::make_pair(s, to)];
        if (!c) {
            const Node& sn = g.node(s);
            Backend& from = backend_of(s);
            Buffer* b = bufs[static_cast<size_t>(s)].get();
            check(b != nullptr, "sched", sn.name + " was released before its copy was made");
            from.synchronize();
            staging.resize(sn.nbytes());
            from.download(*b, 0, staging.data(), staging.size());
            Backend& dst = *backends_[static_cast<size_t>(to)];
            c = dst.alloc(sn.nbytes());
            dst.upload(*c, 0, staging.data(), staging.size());
        }
        return c.get();
    };
    std::vector<std::vector<int>> consumers(static_cast<size_t>(n_nodes));
    for (int i = 0; i < n_nodes; ++i)
        for (int s : g.node(i).src) {
            auto& v = consumers[static_cast<size_t>(s)];
            if (v.empty() || v.back() != i) v.push_back(i);
        }
    // Stage the inputs of a node on another backend as soon as they all exist, before
    // this backend queues more work: then a device's asynchronous moe_ffn partial is
    // already running when the CPU starts its own, instead of the CPU's input copy
    // waiting for the device to finish.
    auto stage_ready_consumers = [&](int i) {
        for (int c : consumers[static_cast<size_t>(i)]) {
            const Node& cn = g.node(c);
            if (cn.backend == g.node(i).backend) continue;
            bool ready = true;
            for (int s : cn.src) ready = ready && s <= i;
            if (!ready) continue;
            for (int s : cn.src)
                if (g.node(s).backend != cn.backend) stage(s, cn.backend);
        }
    };

    for (int i = 0; i < n_nodes; ++i) {
        const Node& n = g.node(i);
        Backend& be = backend_of(i);
        auto out = be.alloc(n.nbytes());
        if (n.op == Op::input) {
            auto it = std::find_if(inputs.begin(), inputs.end(), [&](const GraphInput& in) { return in.node == i; });
            check(it != inputs.end() && it->data, "sched", n.name + ": input node has no data");
            be.upload(*out, 0, it->data, n.nbytes());
            bufs[static_cast<size_t>(i)] = std::move(out);
            stage_ready_consumers(i);
            continue;
        }
        std::vector<Buffer*> in;
        for (int s : n.src) {
            const Node& sn = g.node(s);
            Buffer* b = bufs[static_cast<size_t>(s)].get();
            check(b != nullptr, "sched", n.name + ": input " + sn.name + " was released too early");
            in.push_back(sn.backend != n.backend ? stage(s, n.backend) : b);
        }
        Buffer* state = nullptr;
        if (n.op == Op::mla_attn) {
            check(cache != nullptr, "sched", n.name + ": mla_attn needs a KV cache");
            state = &cache->layer(n.layer, be);
        }
        be.compute(n, in, *out, state);
        if (observer_) {
            // Host views of the inputs: direct on host buffers, else a downloaded copy.
            be.synchronize();
            std::vector<const float*> views;
            std::vector<std::vector<float>> copies_host;
            for (size_t k = 0; k < in.size(); ++k) {
                if (const void* h = in[k]->host_ptr()) {
                    views.push_back(static_cast<const float*>(h));
                } else {
                    copies_host.emplace_back((g.node(n.src[k]).nbytes() + 3) / 4);
                    be.download(*in[k], 0, copies_host.back().data(), g.node(n.src[k]).nbytes());
                    views.push_back(copies_host.back().data());
                }
            }
            observer_(n, views);
        }
        bufs[static_cast<size_t>(i)] = std::move(out);
        stage_ready_consumers(i);
        for (int s : n.src)
            if (last_use[static_cast<size_t>(s)] == i && !keep.count(s)) {
                bufs[static_cast<size_t>(s)].reset();
                for (auto it = copies.begin(); it != copies.end();)
                    it = it->first.first == s ? copies.erase(it) : std::next(it);
            }
    }

    Fetched result;
    for (int id : fetch) {
        check(id >= 0 && id < n_nodes && bufs[static_cast<size_t>(id)], "sched", "fetch of an unknown node");
        const Node& n = g.node(id);
        Backend& be = backend_of(id);
        be.synchronize();
        std::vector<float> v(static_cast<size_t>(n.n_elements()));
        be.download(*bufs[static_cast<size_t>(id)], 0, v.data(), n.nbytes());
        result.owned[id] = std::move(v);
    }
    return result;
}

}  // namespace ds3
