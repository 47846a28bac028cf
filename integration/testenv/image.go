package testenv

import "github.com/s3snap/s3snap/internal/storetest"

// The in-memory test images live in internal/storetest, for library tests
// too; these are the names integration tests know them by.
type (
	// Image is a small, valid OCI image built in memory for tests.
	Image = storetest.Image
	// File is one entry of a test layer.
	File = storetest.File
)

var (
	LayerTar = storetest.LayerTar
	NewImage = storetest.NewImage
	NewIndex = storetest.NewIndex
	PutImage = storetest.PutImage
	mustJSON = storetest.MustJSON
)
