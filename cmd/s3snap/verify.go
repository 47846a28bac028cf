package main

import (
	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/migrator"
)

const verifyLong = `Check that DST holds what SRC holds: the cutover gate.

For every tag (and untagged image) SRC lists, with the same selection flags
as migrate, verify checks that DST has it at the same digest and that every
manifest, config and layer it reaches is present (in a bucket: linked into
the repository, as a registry serving the bucket needs). With --deep every
blob is read back and re-hashed, and every lazy-pull index there rebuilt and
checked against its layer's diff ID; with --lazy-index every tar layer of at
least --lazy-index-min-size must have one.

Missing and mismatched images are listed by name; the exit code is 0 only
if everything checks out.`

func newVerifyCmd(g *globals) *cobra.Command {
	var (
		f    migrateFlags
		deep bool
	)
	cmd := &cobra.Command{
		Use:   "verify SRC DST",
		Short: "Check, per tag, that DST has SRC's digest and every blob (the cutover gate)",
		Long:  verifyLong,
		Example: `  s3snap verify ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com s3://my-images
  s3snap verify --deep --report verify.json docker://registry.example.com/team/app s3://my-images`,
		Args: exactArgs(2, "SRC", "DST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			src, dst, opts, err := f.open(ctx, g, args[0], args[1])
			if err != nil {
				return err
			}
			rep, err := runPass(ctx, g, &f, "verify", opts, func(o ...migrator.RunOption) (*migrator.Report, error) {
				return migrator.Verify(ctx, src, dst, deep, o...)
			})
			return passResult(rep, err)
		},
	}
	f.register(cmd, false)
	cmd.Flags().BoolVar(&deep, "deep", false, "read every blob back and re-hash it")
	return cmd
}
