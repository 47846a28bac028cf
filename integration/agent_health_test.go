package integration

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	agentconfig "github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
)

// TestAgentHealthDegraded: an agent whose registry has two regional
// stores, one of them on a bucket that does not exist, still serves that
// registry's images from the other: /healthz says 200 "degraded" and names
// the failing store, so nothing restarts a working agent. A registry none
// of whose stores answers makes it 503 "fail", naming that registry.
func TestAgentHealthDegraded(t *testing.T) {
	e := testenv.S3(t)
	ctx := context.Background()
	good := store.New(e.Client(t), e.NewBucket(t), store.WithPrefix("ecr"))
	im := testenv.NewImage(t, testenv.HostPlatform(), []testenv.File{{Name: "f", Data: []byte("degraded")}})
	testenv.PutImage(t, good, "team/app", im)
	if err := good.Tag(ctx, "team/app", "v1", im.Digest); err != nil {
		t.Fatal(err)
	}
	missing := fmt.Sprintf("s3://s3snap-no-such-bucket-%d/ecr", time.Now().UnixNano())
	const served, dead = "registry.served.test", "registry.dead.test"
	regional := fmt.Sprintf("[[registry]]\nhost = %q\nstores = { \"us-east-1\" = %q, \"eu-west-1\" = %q }\n", served, good.URL(), missing)

	t.Run("one store of two fails", func(t *testing.T) {
		a := startAgentConfig(t, e, "", regional)
		code, h := a.Health(t)
		if code != http.StatusOK || h.Status != agentconfig.HealthDegraded {
			t.Fatalf("healthz = %d %q, want 200 %q: %+v", code, h.Status, agentconfig.HealthDegraded, h)
		}
		if want := served + "=" + missing; !slices.Equal(h.Failing, []string{want}) || len(h.Down) != 0 {
			t.Errorf("failing %v, down %v; want failing [%s], none down", h.Failing, h.Down, want)
		}
		for _, s := range h.Stores {
			if s.OK != (s.Store == good.URL()) || !s.OK && !strings.Contains(s.Error, "no-such-bucket") {
				t.Errorf("store %s: ok %v, error %q", s.Store, s.OK, s.Error)
			}
		}
		// It is working: the image comes from the store that answers.
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.MirrorAddr+"/v2/team/app/manifests/v1?ns="+served, nil)
		req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != im.Digest.String() {
			t.Errorf("manifest through the degraded agent: %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
		}
	})

	t.Run("a registry with no store that answers", func(t *testing.T) {
		a := startAgentConfig(t, e, "", regional+fmt.Sprintf("\n[[registry]]\nhost = %q\nstore = %q\n", dead, missing))
		code, h := a.Health(t)
		if code != http.StatusServiceUnavailable || h.Status != agentconfig.HealthFail {
			t.Fatalf("healthz = %d %q, want 503 %q: %+v", code, h.Status, agentconfig.HealthFail, h)
		}
		if !slices.Equal(h.Down, []string{dead}) || len(h.Failing) != 2 {
			t.Errorf("down %v, failing %v; want down [%s] and both missing-bucket stores failing", h.Down, h.Failing, dead)
		}
	})
}
