package migrator

import (
	"math"
	"testing"
)

func TestPutRequests(t *testing.T) {
	const part = 16 << 20
	for _, tc := range []struct {
		size int64
		want int64
	}{
		{0, 1}, {1, 1}, {part - 1, 1}, // one PutObject
		{part, 3},             // create, one part, complete
		{part + 1, 4},         // two parts
		{10 * part, 12},       // ten parts
		{10*part + 5<<20, 13}, // eleven parts
	} {
		if got := putRequests(tc.size, part); got != tc.want {
			t.Errorf("putRequests(%d) = %d, want %d", tc.size, got, tc.want)
		}
	}
}

func TestEstimate(t *testing.T) {
	tot := InventoryTotals{BytesToTransfer: 10 << 30, BytesUnique: 30 << 30, ManifestBytes: 2 << 30, PutRequests: 4000}
	tot.estimate(DefaultPrices)
	for name, c := range map[string][2]float64{
		"transfer": {tot.TransferCost, 10 * 0.09},
		"requests": {tot.RequestCost, 4 * 0.005},
		"storage":  {tot.StorageCostMonthly, 32 * 0.023},
	} {
		if math.Abs(c[0]-c[1]) > 1e-9 {
			t.Errorf("%s cost %v, want %v", name, c[0], c[1])
		}
	}
}
