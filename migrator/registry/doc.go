// Package registry is the migrator's client for OCI distribution registries
// and Amazon ECR: a registry repository or ECR account as a migrator.Catalog
// and migrator.Source, a registry as a migrator.Target (ECR creating
// repositories on first push), OCI referrers and cosign tags, ECR's
// expiring tokens, and the HTTP transport under it all, which retries under
// the shared policy of internal/retry and renews credentials on a 401. It
// also parses the ecr://, docker:// and s3:// locations the CLI takes.
package registry
