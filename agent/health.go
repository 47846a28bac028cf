package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/s3snap/s3snap/agent/config"
)

// healthTimeout bounds one store's check.
const healthTimeout = 5 * time.Second

// health answers /healthz with a JSON body naming each store and what
// failed: 200 "ok" when every store's bucket can be listed; 200 "degraded"
// when some fail but every registry still has one that answers (its images
// are read from that one: restarting the agent would only lose them); 503
// "fail" when some registry has no store that answers.
type health struct {
	stores map[string][]storeEntry
}

func (h *health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	res := config.Health{Status: config.HealthOK}
	var wg sync.WaitGroup
	var entries []storeEntry
	for _, es := range h.stores {
		entries = append(entries, es...)
	}
	res.Stores = make([]config.StoreHealth, len(entries))
	for i, e := range entries {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
			defer cancel()
			// One ListObjectsV2 with MaxKeys=1 under the prefix: proves
			// the credentials, the bucket and the network.
			layout, err := e.store.Exists(ctx)
			sh := config.StoreHealth{Registry: e.host, Store: e.store.URL(), Region: e.region, OK: err == nil, Layout: layout}
			if err != nil {
				sh.Error = err.Error()
			}
			res.Stores[i] = sh // each goroutine its own element
		})
	}
	wg.Wait()
	// By registry, each one's stores in the order they are looked in.
	sort.SliceStable(res.Stores, func(i, j int) bool { return res.Stores[i].Registry < res.Stores[j].Registry })
	res.Status, res.Failing, res.Down = verdict(res.Stores)
	status := http.StatusOK
	if res.Status == config.HealthFail {
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(res)
}

// verdict is the overall status of stores (sorted by registry): fail when
// some registry has no store that answers, degraded when some store fails
// but every registry has one that answers, else ok. It also returns the
// failing stores and the registries that are down.
func verdict(stores []config.StoreHealth) (status string, failing, down []string) {
	up := map[string]bool{}
	var registries []string
	for _, s := range stores {
		if _, seen := up[s.Registry]; !seen {
			registries = append(registries, s.Registry)
		}
		up[s.Registry] = up[s.Registry] || s.OK
		if !s.OK {
			failing = append(failing, s.Registry+"="+s.Store)
		}
	}
	for _, r := range registries {
		if !up[r] {
			down = append(down, r)
		}
	}
	switch {
	case len(down) > 0:
		return config.HealthFail, failing, down
	case len(failing) > 0:
		return config.HealthDegraded, failing, nil
	}
	return config.HealthOK, nil, nil
}
