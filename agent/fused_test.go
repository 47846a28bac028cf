package agent

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

func counterFamily(name string, v float64, labels ...string) *dto.MetricFamily {
	m := &dto.Metric{Counter: &dto.Counter{Value: proto.Float64(v)}}
	for i := 0; i+1 < len(labels); i += 2 {
		m.Label = append(m.Label, &dto.LabelPair{Name: proto.String(labels[i]), Value: proto.String(labels[i+1])})
	}
	return &dto.MetricFamily{Name: proto.String(name), Type: dto.MetricType_COUNTER.Enum(), Metric: []*dto.Metric{m}}
}

// TestMergeLazy: a lazy counter on the agent's /metrics is the server's
// plus the agent's (verify_before_start verifies in the agent); what is
// not a plain counter is the server's.
func TestMergeLazy(t *testing.T) {
	const name = "s3snap_lazy_verify_failures_total"
	gauge := &dto.MetricFamily{Name: proto.String("s3snap_lazy_g"), Type: dto.MetricType_GAUGE.Enum(),
		Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(7)}}}}
	for _, tc := range []struct {
		name          string
		local, remote *dto.MetricFamily
		want          float64
	}{
		{"counters add up", counterFamily(name, 1), counterFamily(name, 2), 3},
		{"labelled: the server's", counterFamily(name, 1, "k", "v"), counterFamily(name, 2, "k", "v"), 2},
		{"gauge: the server's", gauge, counterFamily(name, 4), 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mergeLazy(tc.local, tc.remote).GetMetric()[0].GetCounter().GetValue()
			if got != tc.want {
				t.Errorf("merged = %v, want %v", got, tc.want)
			}
		})
	}
}
