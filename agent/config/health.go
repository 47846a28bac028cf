package config

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

// Health statuses.
const (
	HealthOK       = "ok"
	HealthDegraded = "degraded"
	HealthFail     = "fail"
)

// Health is the /healthz body.
type Health struct {
	Status string        `json:"status"` // HealthOK, HealthDegraded or HealthFail
	Stores []StoreHealth `json:"stores"`
	// Failing lists the stores that failed, as registry=store.
	Failing []string `json:"failing,omitempty"`
	// Down lists the registries none of whose stores answered.
	Down []string `json:"down,omitempty"`
}
