package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/migrator"
)

// priceFlags override the prices a dry run's estimate assumes.
type priceFlags struct {
	transfer, put, storage float64
}

const (
	flagPriceTransfer = "price-transfer-gb"
	flagPricePut      = "price-put-1000"
	flagPriceStorage  = "price-storage-gb-month"
)

func (p *priceFlags) register(cmd *cobra.Command) {
	d := migrator.DefaultPrices
	fl := cmd.Flags()
	fl.Float64Var(&p.transfer, flagPriceTransfer, d.TransferPerGB, "with --dry-run: USD per GB read out of the source (0 for ECR to S3 in one region, 0.02 across regions)")
	fl.Float64Var(&p.put, flagPricePut, d.PutPer1000, "with --dry-run: USD per 1,000 S3 PUT requests")
	fl.Float64Var(&p.storage, flagPriceStorage, d.StoragePerGBMonth, "with --dry-run: USD per GB-month of S3 storage")
}

// options validates the prices and returns the estimate's options.
func (p *priceFlags) options(cmd *cobra.Command, dryRun bool) ([]migrator.RunOption, error) {
	prices := migrator.DefaultPrices
	var changed []string
	for _, f := range []struct {
		name string
		v    float64
		dst  *float64
	}{{flagPriceTransfer, p.transfer, &prices.TransferPerGB}, {flagPricePut, p.put, &prices.PutPer1000}, {flagPriceStorage, p.storage, &prices.StoragePerGBMonth}} {
		if !cmd.Flags().Changed(f.name) {
			continue
		}
		if !dryRun {
			return nil, usagef("--%s only applies to --dry-run", f.name)
		}
		if f.v < 0 {
			return nil, usagef("--%s %v: want a price of 0 or more", f.name, f.v)
		}
		*f.dst = f.v
		changed = append(changed, fmt.Sprintf("--%s %v", f.name, f.v))
	}
	if len(changed) > 0 {
		prices.Basis += "; overridden: " + strings.Join(changed, ", ")
	}
	return []migrator.RunOption{migrator.WithPrices(prices), migrator.WithPartSize(migratePartSize)}, nil
}

// printInventory prints a dry run: a table of the images, the totals and the
// estimate with the prices it assumes.
func printInventory(w io.Writer, rep *migrator.Report) error {
	inv := rep.Inventory
	fmt.Fprintf(w, "migrate --dry-run: %s -> %s\n", inv.Source, inv.Destination)
	if inv.Platforms != "" {
		fmt.Fprintf(w, "platforms kept: %s\n", inv.Platforms)
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "REPOSITORY\tTAG\tDIGEST\tPLATFORMS\tSIZE\tPUSHED\tSTATUS")
	for _, im := range inv.Images {
		tag, pushed, status := im.Tag, "-", string(im.Status)
		if tag == "" {
			tag = "<untagged>"
		}
		if !im.PushedAt.IsZero() {
			pushed = im.PushedAt.UTC().Format("2006-01-02 15:04")
		}
		switch im.Status {
		case migrator.StatusPlanned:
			status = "to copy"
		case migrator.StatusUnchanged:
			status = "already there"
		}
		platforms := strings.Join(im.Platforms, ",")
		if platforms == "" {
			platforms = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", im.Repository, tag, shortDigest(im.Digest), platforms, humanSize(im.Size), pushed, status)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	t, p := inv.Totals, inv.Prices
	fmt.Fprintln(w)
	tw = newTable(w)
	fmt.Fprintf(tw, "Images:\t%d (%d tags, %d untagged): %d to copy, %d already there, %d failed\n", t.Images, t.Tags, t.Untagged, t.ToCopy, t.Unchanged, t.Failed)
	fmt.Fprintf(tw, "Listed:\t%s\t(the images' sizes added up, manifests included)\n", humanSize(t.BytesListed))
	fmt.Fprintf(tw, "After deduplication:\t%s\t(%d configs and layers, each once; and %d manifests, %s)\n", humanSize(t.BytesUnique), t.Blobs, t.Manifests, humanSize(t.ManifestBytes))
	fmt.Fprintf(tw, "Already in the destination:\t%s\t(%d blobs a real run skips)\n", humanSize(t.BytesPresent), t.BlobsPresent)
	fmt.Fprintf(tw, "To transfer:\t%s\t(%d blobs)\n", humanSize(t.BytesToTransfer), t.BlobsToTransfer)
	fmt.Fprintf(tw, "S3 PUT requests:\t%d\t(parts of %s)\n", t.PutRequests, humanSize(migratePartSize))
	fmt.Fprintf(tw, "Took:\t%s\n", rep.Finished.Sub(rep.Started).Round(time.Millisecond))
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nEstimated cost (%s):\n", p.Currency)
	tw = newTable(w)
	fmt.Fprintf(tw, "  transfer out of the source\t%s\t%s at %s/GB\n", money(t.TransferCost), humanSize(t.BytesToTransfer), price(p.TransferPerGB))
	fmt.Fprintf(tw, "  S3 PUT requests\t%s\t%d at %s per 1,000\n", money(t.RequestCost), t.PutRequests, price(p.PutPer1000))
	fmt.Fprintf(tw, "  S3 Standard storage\t%s/month\t%s at %s/GB-month\n", money(t.StorageCostMonthly), humanSize(t.BytesUnique+t.ManifestBytes), price(p.StoragePerGBMonth))
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "Assumed prices: %s (GB = 2^30 bytes). Override with --%s, --%s, --%s.\n", p.Basis, flagPriceTransfer, flagPricePut, flagPriceStorage)
	if fails := rep.Failures(); len(fails) > 0 {
		fmt.Fprintln(w, "Failures:")
		for _, e := range fails {
			fmt.Fprintf(w, "  %s: %s\n", e.Key(), e.Reason)
		}
	}
	return nil
}

// shortDigest is sha256: and the first 12 hex digits.
func shortDigest(d migrator.Digest) string {
	if d == "" {
		return "-"
	}
	if s := d.String(); len(s) > len("sha256:")+12 {
		return s[:len("sha256:")+12]
	}
	return d.String()
}

// price formats a unit price with the digits it has: $0.09, $0.005.
func price(v float64) string { return "$" + strconv.FormatFloat(v, 'f', -1, 64) }

// money formats an amount: cents above a dollar, more digits below.
func money(v float64) string {
	if v >= 1 || v == 0 {
		return fmt.Sprintf("$%.2f", v)
	}
	return fmt.Sprintf("$%.4f", v)
}
