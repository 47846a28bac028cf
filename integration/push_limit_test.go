package integration

import (
	"testing"
	"time"

	"github.com/s3snap/s3snap/integration/testenv"
)

// TestPushMaxBandwidth: push --max-bandwidth is one budget for the whole
// push, shared by the bucket and an --also registry: 2 × 32 MiB at 8 MiB/s
// takes about 8 s, within 10%.
func TestPushMaxBandwidth(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 64 MiB at 8 MiB/s")
	}
	e := testenv.S3(t)
	src := testenv.StartFSRegistry(t)
	dst := testenv.StartFSRegistry(t)
	im := opaqueImage(t, randomLayers(71, 2, 16<<20))
	regPusher{addr: src.Addr}.image(t, "big", "v1", im)
	cli := newPushCLI(t, e)

	const limit = 8 << 20
	start := time.Now()
	cli.ok(t, "push", "--max-bandwidth=8MiB", "docker://"+src.Addr+"/big:v1", "s3://"+e.NewBucket(t)+"/big:v1",
		"--also", "docker://"+dst.Addr+"/big:v1")
	elapsed := time.Since(start).Seconds()
	moved := 2 * float64(len(im.Layers[0])+len(im.Layers[1])+len(im.Config))
	rate := moved / elapsed
	t.Logf("pushed %.0f bytes to two destinations in %.2fs: %.2f MiB/s (limit %d MiB/s)", moved, elapsed, rate/(1<<20), limit>>20)
	if rate > limit*1.1 || rate < limit*0.9 {
		t.Errorf("throughput %.2f MiB/s: want %d MiB/s within 10%%", rate/(1<<20), limit>>20)
	}
}
