//! Tier-2 on S3 or an S3-compatible store (MinIO, Ceph, Garage, Dell ECS), through
//! aws-sdk-s3. Objects are `PREFIX + name` in one bucket; each object is written with one
//! PUT, whole (S3 cannot append), so [`Tier2::supports_append`] is false.

use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use tributary::log::tier2::{check_name, BoxFuture, Tier2, Tier2Error};

use crate::config::S3Settings;

/// Region when neither the file nor the AWS environment names one.
const DEFAULT_REGION: &str = "us-east-1";

/// An S3 bucket and prefix as a Tier-2.
#[derive(Debug, Clone)]
pub struct S3Tier2 {
    client: Client,
    bucket: String,
    prefix: String,
}

fn s3err(doing: &str, e: impl std::error::Error) -> Tier2Error {
    Tier2Error(format!("{doing}: {}", DisplayErrorContext(e)))
}

impl S3Tier2 {
    /// A client for `s`. Credentials come from the settings, else from the usual AWS
    /// chain (environment, profile files, web identity, instance role); nothing is
    /// contacted until the first request.
    pub async fn new(s: &S3Settings) -> S3Tier2 {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = &s.region {
            loader = loader.region(Region::new(r.clone()));
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(s.path_style)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            );
        if sdk.region().is_none() {
            b = b.region(Region::new(DEFAULT_REGION));
        }
        if let Some(e) = &s.endpoint {
            b = b.endpoint_url(e);
        }
        if let Some((id, secret)) = &s.credentials {
            b = b.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "tributary-config",
            ));
        }
        S3Tier2 {
            client: Client::from_conf(b.build()),
            bucket: s.bucket.clone(),
            prefix: s.prefix.clone(),
        }
    }

    fn key(&self, name: &str) -> Result<String, Tier2Error> {
        check_name(name)?;
        Ok(format!("{}{name}", self.prefix))
    }
}

impl Tier2 for S3Tier2 {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn supports_append(&self) -> bool {
        false
    }

    fn put<'a>(&'a self, name: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), Tier2Error>> {
        Box::pin(async move {
            let key = self.key(name)?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| s3err(&format!("PUT {key}"), e))?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, Tier2Error>> {
        Box::pin(async move {
            let key = self.key(name)?;
            let out = match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                    return Ok(None)
                }
                Err(e) => return Err(s3err(&format!("GET {key}"), e)),
            };
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| s3err(&format!("GET {key} (body)"), e))?;
            Ok(Some(body.into_bytes()))
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Tier2Error>> {
        Box::pin(async move {
            let key = self.key(name)?;
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| s3err(&format!("DELETE {key}"), e))?;
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, Tier2Error>> {
        Box::pin(async move {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .into_paginator()
                .send();
            let mut out = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| s3err(&format!("LIST {}", self.prefix), e))?;
                for o in page.contents() {
                    // Only direct children: a longer prefix belongs to someone else.
                    if let Some(name) = o.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                        if check_name(name).is_ok() {
                            out.push(name.to_string());
                        }
                    }
                }
            }
            out.sort();
            Ok(out)
        })
    }
}
