// Two-stream placement of a captured decode step (branches.h).
#include "backends/cuda/branches.h"

#include <algorithm>

#include "backends/cuda/check.h"

namespace ds3::cuda {

void BranchPlan::begin(int n) {
    where_.assign(static_cast<size_t>(n), -1);
    event_of_.assign(static_cast<size_t>(n), -1);
    last_[0] = last_[1] = -1;
    synced_[0] = synced_[1] = -1;
    cur_ = 0;
}

BranchPlan::Step BranchPlan::place(std::span<const int> srcs) {
    int newest = -1;
    bool tail[2] = {false, false};
    for (int s : srcs) {
        newest = std::max(newest, s);
        for (int k = 0; k < 2; ++k)
            tail[k] = tail[k] || (last_[k] >= 0 && event_of_[static_cast<size_t>(s)] == last_[k]);
    }
    int pick = 0;
    if (tail[0]) pick = 0;  // a chain goes on where it is, the main one first
    else if (tail[1]) pick = 1;
    else if (newest >= 0) {
        // Both streams have moved on from every source: a branch. It forks onto the other
        // stream when that one is idle (its last unit already waited for here).
        const int home = where_[static_cast<size_t>(newest)], other = 1 - home;
        pick = last_[other] < 0 || synced_[home] >= last_[other] ? other : home;
    }
    cur_ = pick;
    const int other = 1 - pick;
    // Wait for the newest source on the other stream (its event covers the older ones).
    int need = -1;
    for (int s : srcs)
        if (s >= 0 && where_[static_cast<size_t>(s)] == other) need = std::max(need, event_of_[static_cast<size_t>(s)]);
    Step st;
    st.stream = pick;
    if (need > synced_[pick]) {
        st.wait = need;
        synced_[pick] = need;
    }
    return st;
}

void BranchPlan::done(int first, int last) {
    for (int i = first; i <= last; ++i) {
        where_[static_cast<size_t>(i)] = cur_;
        event_of_[static_cast<size_t>(i)] = last;
    }
    last_[cur_] = last;
}

int BranchPlan::join() {
    if (last_[1] < 0 || synced_[0] >= last_[1]) return -1;
    synced_[0] = last_[1];
    return last_[1];
}

Branches::~Branches() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

void Branches::begin(cudaStream_t main, cudaStream_t side, int n) {
    s_[0] = main, s_[1] = side;
    while (static_cast<int>(events_.size()) < n) {
        cudaEvent_t e = nullptr;
        DS3_CU(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        events_.push_back(e);
    }
    plan_.begin(n);
}

cudaStream_t Branches::place(std::span<const int> srcs) {
    const BranchPlan::Step st = plan_.place(srcs);
    cur_ = st.stream;
    if (st.wait >= 0) DS3_CU(cudaStreamWaitEvent(s_[cur_], events_[static_cast<size_t>(st.wait)], 0));
    return s_[cur_];
}

void Branches::done(int first, int last) {
    DS3_CU(cudaEventRecord(events_[static_cast<size_t>(last)], s_[cur_]));
    plan_.done(first, last);
}

void Branches::join() {
    if (const int n = plan_.join(); n >= 0) DS3_CU(cudaStreamWaitEvent(s_[0], events_[static_cast<size_t>(n)], 0));
}

}  // namespace ds3::cuda
