package integration

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/s3snap/s3snap/doctor"
	"github.com/s3snap/s3snap/integration/faultproxy"
	"github.com/s3snap/s3snap/integration/testenv"
)

// TestDoctorLazyIndexAccess: on an installed node with [lazy] enabled,
// s3snap doctor reads one lazy index per store: a warning while the
// bucket has none, ok once `s3snap index` built them, and a failing check
// naming the IAM policy when S3 denies the node the index (GetObject) or
// its listing (ListBucket): lazy mode would otherwise silently never
// engage.
func TestDoctorLazyIndexAccess(t *testing.T) {
	n := newInstalledNode(t, stockConfigs(t)["2.x"], "2.x", testenv.Containerd2)
	ctx := context.Background()
	im := testenv.RunnableImage(t, []testenv.File{{Name: "data/l", Data: pseudoRandom(71, 256<<10)}})
	testenv.PutImage(t, n.st, "team/lazy", im)
	if err := n.st.Tag(ctx, "team/lazy", "v1", im.Digest); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(n.root, "etc/s3snap/config.toml")
	installed, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	// doctor reads the config; the running agent keeps its own.
	setConfig := func(endpoint string) {
		cfg := strings.Replace(string(installed), "endpoint = \""+n.e.Endpoint+"\"", "endpoint = \""+endpoint+"\"", 1)
		if !strings.Contains(cfg, endpoint) {
			t.Fatalf("installed config names no endpoint %s:\n%s", n.e.Endpoint, installed)
		}
		writeTreeFile(t, cfgPath, []byte(cfg+"\n[lazy]\nenabled = true\n"))
	}
	setConfig(n.e.Endpoint)
	name := "lazy index s3://" + n.bucket + "/ecr"

	t.Run("no index yet", func(t *testing.T) {
		rep, code := n.doctor(t, nil)
		if c := find(rep, name); code != 0 || c.Status != doctor.Warn || !strings.Contains(c.Detail, "no lazy index") || !strings.Contains(c.Fix, "s3snap index") {
			t.Errorf("exit %d, %+v%s", code, c, describe(rep))
		}
	})

	newMigrateCLI(t, n.e).run(t, "index", "s3://"+n.bucket+"/ecr/team/lazy:v1")
	t.Run("an index", func(t *testing.T) {
		rep, code := n.doctor(t, nil)
		if c := find(rep, name); code != 0 || rep.Status != doctor.OK || c.Status != doctor.OK || !strings.Contains(c.Detail, "read and valid") {
			t.Errorf("exit %d, %+v%s", code, c, describe(rep))
		}
	})

	proxy, err := faultproxy.New(n.e.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	setConfig(proxy.URL())
	lazyKey := func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/s3snap/lazy/") }
	lazyList := func(r *http.Request) bool { return strings.Contains(r.URL.Query().Get("prefix"), "s3snap/lazy/") }
	for _, tc := range []struct {
		name  string
		match func(*http.Request) bool
		what  string
	}{
		{"GetObject denied", lazyKey, "read the index"},
		{"ListBucket denied", lazyList, "list s3://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy.Reset()
			denied := proxy.Add(faultproxy.Rule{Match: tc.match, Fault: faultproxy.Status, Status: http.StatusForbidden, Code: "AccessDenied"})
			rep, code := n.doctor(t, nil)
			c := find(rep, name)
			if code != 1 || c.Status != doctor.Fail || !strings.Contains(c.Detail, "access denied: "+tc.what) || !strings.Contains(c.Fix, "docs/iam/node-policy.json") {
				t.Errorf("exit %d, %+v%s", code, c, describe(rep))
			}
			if denied.Fired() == 0 {
				t.Error("doctor never asked for the lazy index")
			}
			if b := find(rep, "bucket s3://"+n.bucket+"/ecr"); b.Status != doctor.OK {
				t.Errorf("the bucket check failed too: %+v", b)
			}
		})
	}
}
