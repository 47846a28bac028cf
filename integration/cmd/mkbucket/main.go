// Command mkbucket creates an S3 bucket on the local test server, for the
// demo script (which has no AWS CLI): mkbucket ENDPOINT BUCKET. Credentials
// come from the environment. An existing bucket is fine. With -rm it
// removes the bucket and everything in it instead (the demo's cleanup).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

func main() {
	rm := flag.Bool("rm", false, "remove the bucket and every object in it")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: mkbucket [-rm] ENDPOINT BUCKET")
		os.Exit(2)
	}
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion("us-east-1"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkbucket:", err)
		os.Exit(1)
	}
	c := s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(flag.Arg(0))
		o.UsePathStyle = true
	})
	bucket := aws.String(flag.Arg(1))
	if *rm {
		if err := remove(ctx, c, bucket); err != nil {
			fmt.Fprintln(os.Stderr, "mkbucket -rm:", err)
			os.Exit(1)
		}
		return
	}
	_, err = c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: bucket})
	var owned *types.BucketAlreadyOwnedByYou
	if err != nil && !errors.As(err, &owned) {
		fmt.Fprintln(os.Stderr, "mkbucket:", err)
		os.Exit(1)
	}
}

// remove deletes every object of bucket, then the bucket.
func remove(ctx context.Context, c *s3.Client, bucket *string) error {
	p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: bucket})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list: %w", err)
		}
		for _, o := range page.Contents {
			if _, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: bucket, Key: o.Key}); err != nil {
				return fmt.Errorf("delete %s: %w", aws.ToString(o.Key), err)
			}
		}
	}
	if _, err := c.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: bucket}); err != nil {
		return fmt.Errorf("delete bucket: %w", err)
	}
	return nil
}
