package agent

import (
	"fmt"
	"testing"

	"github.com/s3snap/s3snap/agent/config"
)

func TestHealthVerdict(t *testing.T) {
	ok := func(reg, st string) config.StoreHealth { return config.StoreHealth{Registry: reg, Store: st, OK: true} }
	bad := func(reg, st string) config.StoreHealth {
		return config.StoreHealth{Registry: reg, Store: st, Error: "boom"}
	}
	for _, tc := range []struct {
		name          string
		stores        []config.StoreHealth
		status        string
		failing, down string
	}{
		{"all answer", []config.StoreHealth{ok("a", "s3://a1"), ok("a", "s3://a2"), ok("b", "s3://b")}, config.HealthOK, "[]", "[]"},
		{"one region of two fails", []config.StoreHealth{ok("a", "s3://a1"), bad("a", "s3://a2"), ok("b", "s3://b")}, config.HealthDegraded, "[a=s3://a2]", "[]"},
		{"own region fails, other answers", []config.StoreHealth{bad("a", "s3://a1"), ok("a", "s3://a2")}, config.HealthDegraded, "[a=s3://a1]", "[]"},
		{"a registry with none left", []config.StoreHealth{ok("a", "s3://a1"), bad("b", "s3://b1"), bad("b", "s3://b2")}, config.HealthFail, "[b=s3://b1 b=s3://b2]", "[b]"},
		{"single store fails", []config.StoreHealth{bad("a", "s3://a")}, config.HealthFail, "[a=s3://a]", "[a]"},
		{"all fail", []config.StoreHealth{bad("a", "s3://a"), bad("b", "s3://b")}, config.HealthFail, "[a=s3://a b=s3://b]", "[a b]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, failing, down := verdict(tc.stores)
			if status != tc.status || fmt.Sprint(failing) != tc.failing || fmt.Sprint(down) != tc.down {
				t.Errorf("verdict = %s failing %v down %v, want %s failing %s down %s", status, failing, down, tc.status, tc.failing, tc.down)
			}
		})
	}
}
