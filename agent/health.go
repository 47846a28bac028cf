package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"sync"
	"time"
)

// healthTimeout bounds one store's check.
const healthTimeout = 5 * time.Second

// health answers /healthz: 200 when every store's bucket can be listed,
// 503 otherwise, with a JSON body naming each store and what failed.
type health struct {
	stores map[string][]storeEntry
}

// StoreHealth is one store's entry in the /healthz body.
type StoreHealth struct {
	Registry string `json:"registry"`
	Store    string `json:"store"`
	// Region is the store's region for a registry with regional stores.
	Region string `json:"region,omitempty"`
	OK     bool   `json:"ok"`
	// Layout reports whether a registry layout (docker/registry/v2/) is
	// under the prefix: false means nothing was migrated there yet.
	Layout bool   `json:"layout"`
	Error  string `json:"error,omitempty"`
}

// Health is the /healthz body.
type Health struct {
	Status string        `json:"status"` // "ok" or "fail"
	Stores []StoreHealth `json:"stores"`
}

func (h *health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	res := Health{Status: "ok"}
	var wg sync.WaitGroup
	var entries []storeEntry
	for _, es := range h.stores {
		entries = append(entries, es...)
	}
	res.Stores = make([]StoreHealth, len(entries))
	for i, e := range entries {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
			defer cancel()
			// One ListObjectsV2 with MaxKeys=1 under the prefix: proves
			// the credentials, the bucket and the network.
			layout, err := e.store.Exists(ctx)
			sh := StoreHealth{Registry: e.host, Store: e.store.URL(), Region: e.region, OK: err == nil, Layout: layout}
			if err != nil {
				sh.Error = err.Error()
			}
			res.Stores[i] = sh // each goroutine its own element
		})
	}
	wg.Wait()
	// By registry, each one's stores in the order they are looked in.
	sort.SliceStable(res.Stores, func(i, j int) bool { return res.Stores[i].Registry < res.Stores[j].Registry })
	status := http.StatusOK
	for _, s := range res.Stores {
		if !s.OK {
			res.Status, status = "fail", http.StatusServiceUnavailable
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(res)
}
