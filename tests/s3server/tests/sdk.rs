//! End-to-end tests: the server driven by the real AWS SDK (real SigV4), plus raw HTTP for
//! anonymous and virtual-hosted requests, and the binary's start/stop contract.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents,
};
use aws_sdk_s3::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, EncodingType};
use aws_sdk_s3::Client;
use cwfs_testserver::faults::{FaultAction, NoFaults, RequestInfo};
use cwfs_testserver::{ServerConfig, TestServer};

const AK: &str = "AKIDTEST";
const SK: &str = "secret/key+with=chars";

fn start() -> TestServer {
    let s = TestServer::start(ServerConfig::default()).expect("start server");
    s.add_credentials(AK, SK, None, None);
    s.create_bucket("bucket");
    s
}

fn config(s: &TestServer, ak: &str, sk: &str, token: Option<&str>) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(s.region().to_owned()))
        .endpoint_url(s.endpoint())
        .credentials_provider(Credentials::new(
            ak,
            sk,
            token.map(str::to_owned),
            None,
            "test",
        ))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(RetryConfig::disabled())
}

fn client(s: &TestServer) -> Client {
    Client::from_conf(config(s, AK, SK, None).build())
}

fn client_with(s: &TestServer, ak: &str, sk: &str, token: Option<&str>) -> Client {
    Client::from_conf(config(s, ak, sk, token).build())
}

/// (HTTP status, S3 error code) of a failed call.
fn status_code<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> (u16, String) {
    let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
    (status, e.code().unwrap_or("").to_owned())
}

macro_rules! err_of {
    ($e:expr) => {{
        let e = $e.expect_err("expected an error");
        status_code(&e)
    }};
}

async fn get(c: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {key:?}: {e:?}"));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

fn tricky_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "x",
        "x/y",
        "x/y/z",
        "key with spaces",
        "unicodé/ファイル.txt",
        "plus+sign",
        "percent%2Fencoded%20",
        "ctl\u{1}char",
        "tab\tkey",
        "cr\rkey",
        "a//b",
        "./",
        "../",
        "./dot/../x",
        "dir/",
        "question?mark&amp=1#hash",
        "~tilde*star'quote\"(paren)",
        "/leading-slash",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    keys.push("k".repeat(1024));
    keys.push("é".repeat(512));
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_head_tricky_keys_byte_exact() {
    let s = start();
    let c = client(&s);
    for (i, key) in tricky_keys().iter().enumerate() {
        let data: Vec<u8> = (0..(i * 37 + 1)).map(|j| (j * 7 + i) as u8).collect();
        let put = c
            .put_object()
            .bucket("bucket")
            .key(key)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {key:?}: {e:?}"));
        assert_eq!(
            put.e_tag(),
            s.object_etag("bucket", key).as_deref(),
            "{key:?}"
        );
        assert_eq!(get(&c, "bucket", key).await, data, "{key:?}");
        let head = c
            .head_object()
            .bucket("bucket")
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(head.content_length(), Some(data.len() as i64));
        assert_eq!(head.e_tag(), s.object_etag("bucket", key).as_deref());
    }
    // Direct puts are visible over HTTP, including a key ending in '/' with data.
    s.put_object("bucket", "marker/", b"marker data".to_vec());
    assert_eq!(get(&c, "bucket", "marker/").await, b"marker data");
    s.delete_object("bucket", "marker/");
    let (status, code) = err_of!(c.get_object().bucket("bucket").key("marker/").send().await);
    assert_eq!((status, code.as_str()), (404, "NoSuchKey"));
    let (status, code) = err_of!(c.get_object().bucket("nobucket").key("k").send().await);
    assert_eq!((status, code.as_str()), (404, "NoSuchBucket"));
    let (status, _) = err_of!(c.head_object().bucket("bucket").key("missing").send().await);
    assert_eq!(status, 404);

    // Every key lists back exactly (with encoding-type=url for the control characters).
    let mut listed = BTreeSet::new();
    let mut token = None;
    loop {
        let out = c
            .list_objects_v2()
            .bucket("bucket")
            .encoding_type(EncodingType::Url)
            .max_keys(5)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        for o in out.contents() {
            assert!(listed.insert(percent_decode(o.key().unwrap())));
        }
        token = out.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    let expected: BTreeSet<String> = tricky_keys().into_iter().collect();
    assert_eq!(listed, expected);
    // Without encoding-type, keys with a CR or a tab still list back exactly (CR is sent as
    // `&#xD;`, which XML parsers do not normalise away).
    for prefix in ["cr", "tab", "unicod", "question"] {
        let out = c
            .list_objects_v2()
            .bucket("bucket")
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        let keys: Vec<&str> = out.contents().iter().map(|o| o.key().unwrap()).collect();
        let want: Vec<String> = tricky_keys()
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect();
        assert_eq!(keys, want);
    }

    let stats = s.stats();
    assert!(stats.get_requests >= tricky_keys().len() as u64);
    assert!(stats.head_requests >= tricky_keys().len() as u64);
    assert!(stats.put_requests >= tricky_keys().len() as u64);
    assert_eq!(stats.auth_failures, 0);
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_and_conditions() {
    let s = start();
    let c = client(&s);
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    s.put_object("bucket", "obj", data.clone());
    s.put_object("bucket", "empty", Vec::new());

    for (range, span) in [
        ("bytes=0-9", 0..10),
        ("bytes=990-", 990..1000),
        ("bytes=-3", 997..1000),
        ("bytes=500-5000", 500..1000),
        ("bytes=0-0", 0..1),
    ] {
        let out = c
            .get_object()
            .bucket("bucket")
            .key("obj")
            .range(range)
            .send()
            .await
            .unwrap();
        assert_eq!(out.content_length(), Some(span.len() as i64));
        assert_eq!(
            out.content_range(),
            Some(format!("bytes {}-{}/1000", span.start, span.end - 1).as_str())
        );
        assert_eq!(
            out.body.collect().await.unwrap().into_bytes().to_vec(),
            data[span]
        );
    }
    let head = c
        .head_object()
        .bucket("bucket")
        .key("obj")
        .range("bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(10));
    assert_eq!(head.content_range(), Some("bytes 10-19/1000"));
    let (status, code) = err_of!(
        c.get_object()
            .bucket("bucket")
            .key("obj")
            .range("bytes=1000-")
            .send()
            .await
    );
    assert_eq!((status, code.as_str()), (416, "InvalidRange"));
    let (status, code) = err_of!(
        c.get_object()
            .bucket("bucket")
            .key("empty")
            .range("bytes=0-")
            .send()
            .await
    );
    assert_eq!((status, code.as_str()), (416, "InvalidRange"));
    assert_eq!(get(&c, "bucket", "empty").await, b"");

    let etag = s.object_etag("bucket", "obj").unwrap();
    let out = c
        .get_object()
        .bucket("bucket")
        .key("obj")
        .if_match(&etag)
        .send()
        .await
        .unwrap();
    assert_eq!(out.e_tag(), Some(etag.as_str()));
    let (status, code) = err_of!(
        c.get_object()
            .bucket("bucket")
            .key("obj")
            .if_match("\"0123\"")
            .send()
            .await
    );
    assert_eq!((status, code.as_str()), (412, "PreconditionFailed"));
    let (status, _) = err_of!(
        c.head_object()
            .bucket("bucket")
            .key("obj")
            .if_match("\"0123\"")
            .send()
            .await
    );
    assert_eq!(status, 412);
    let (status, _) = err_of!(
        c.get_object()
            .bucket("bucket")
            .key("obj")
            .if_none_match(&etag)
            .send()
            .await
    );
    assert_eq!(status, 304);
    let out = c
        .get_object()
        .bucket("bucket")
        .key("obj")
        .if_none_match("\"other\"")
        .range("bytes=1-2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.body.collect().await.unwrap().into_bytes().to_vec(),
        &data[1..3]
    );

    // LastModified: milliseconds in listings, whole seconds in HEAD.
    let head = c
        .head_object()
        .bucket("bucket")
        .key("obj")
        .send()
        .await
        .unwrap();
    let list = c
        .list_objects_v2()
        .bucket("bucket")
        .prefix("obj")
        .send()
        .await
        .unwrap();
    let listed = list.contents()[0].last_modified().unwrap();
    let headed = head.last_modified().unwrap();
    assert_eq!(listed.secs(), headed.secs());
    assert_eq!(headed.subsec_nanos(), 0);
    assert_ne!(listed.subsec_nanos(), 0);
    assert_eq!(listed.subsec_nanos() % 1_000_000, 0);

    // A whole-second If-Modified-Since at the object's own second: not modified.
    let (status, _) = err_of!(
        c.get_object()
            .bucket("bucket")
            .key("obj")
            .if_modified_since(*headed)
            .send()
            .await
    );
    assert_eq!(status, 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pagination_with_delimiter_over_2500_keys() {
    let s = start();
    let c = client(&s);
    let mut all = BTreeSet::new();
    for d in 0..25 {
        for f in 0..90 {
            all.insert(format!("dir{d:02}/file{f:03}"));
        }
    }
    for f in 0..250 {
        all.insert(format!("top{f:03}"));
    }
    all.insert("dir07/sub/deeper/x".into());
    all.insert("dir07".into()); // a key equal to a directory name without the slash
    for k in &all {
        s.put_object("bucket", k, k.as_bytes().to_vec());
    }
    assert!(all.len() > 2500);

    // Flat listing with the SDK paginator: default (1000) pages.
    let mut pages = c.list_objects_v2().bucket("bucket").into_paginator().send();
    let mut flat = Vec::new();
    let mut npages = 0;
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        npages += 1;
        assert_eq!(page.key_count(), Some(page.contents().len() as i32));
        flat.extend(page.contents().iter().map(|o| o.key().unwrap().to_owned()));
    }
    assert_eq!(npages, 3);
    assert_eq!(flat, all.iter().cloned().collect::<Vec<_>>());

    // Top level with delimiter, small pages: every common prefix once, keys and prefixes merged.
    for page_size in [1, 7, 100, 1000] {
        let mut entries = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = c
                .list_objects_v2()
                .bucket("bucket")
                .delimiter("/")
                .max_keys(page_size)
                .set_continuation_token(token.clone())
                .send()
                .await
                .unwrap();
            let n = out.contents().len() + out.common_prefixes().len();
            assert_eq!(out.key_count(), Some(n as i32));
            assert!(n <= page_size as usize);
            entries.extend(out.contents().iter().map(|o| o.key().unwrap().to_owned()));
            entries.extend(
                out.common_prefixes()
                    .iter()
                    .map(|p| p.prefix().unwrap().to_owned()),
            );
            if out.is_truncated() == Some(true) {
                assert_eq!(n, page_size as usize);
                token = out.next_continuation_token().map(str::to_owned);
                assert!(token.is_some());
            } else {
                assert!(out.next_continuation_token().is_none());
                break;
            }
        }
        let unique: BTreeSet<String> = entries.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            entries.len(),
            "duplicates with page size {page_size}"
        );
        assert_eq!(entries.len(), 25 + 250 + 1);
        assert!(unique.contains("dir07/") && unique.contains("dir07") && unique.contains("top249"));
    }

    // Prefix + delimiter, and start-after.
    let out = c
        .list_objects_v2()
        .bucket("bucket")
        .prefix("dir07/")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    assert_eq!(out.contents().len(), 90);
    let cps: Vec<&str> = out
        .common_prefixes()
        .iter()
        .map(|p| p.prefix().unwrap())
        .collect();
    assert_eq!(cps, ["dir07/sub/"]);
    let out = c
        .list_objects_v2()
        .bucket("bucket")
        .start_after("top247")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = out.contents().iter().map(|o| o.key().unwrap()).collect();
    assert_eq!(keys, ["top248", "top249"]);
    // max-keys above 1000 is capped.
    let out = c
        .list_objects_v2()
        .bucket("bucket")
        .max_keys(5000)
        .send()
        .await
        .unwrap();
    assert_eq!(out.contents().len(), 1000);
    assert_eq!(out.max_keys(), Some(1000));
    // ListObjects v1 with a marker.
    let out = c
        .list_objects()
        .bucket("bucket")
        .delimiter("/")
        .marker("dir23/")
        .max_keys(2)
        .send()
        .await
        .unwrap();
    let cps: Vec<&str> = out
        .common_prefixes()
        .iter()
        .map(|p| p.prefix().unwrap())
        .collect();
    assert_eq!(cps, ["dir24/"]);
    assert_eq!(out.contents()[0].key(), Some("top000"));
    assert_eq!(out.next_marker(), Some("top000"));
    assert!(s.stats().list_requests > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_tokens_expiry_region() {
    let s = start();
    s.put_object("bucket", "k", b"v".to_vec());

    let (status, code) = err_of!(
        client_with(&s, "NOPE", SK, None)
            .get_object()
            .bucket("bucket")
            .key("k")
            .send()
            .await
    );
    assert_eq!((status, code.as_str()), (403, "InvalidAccessKeyId"));
    let (status, code) = err_of!(
        client_with(&s, AK, "wrong", None)
            .get_object()
            .bucket("bucket")
            .key("k")
            .send()
            .await
    );
    assert_eq!((status, code.as_str()), (403, "SignatureDoesNotMatch"));

    // Session tokens.
    s.add_credentials("TEMP", "tempsecret", Some("tok-123"), None);
    let (status, code) = err_of!(
        client_with(&s, "TEMP", "tempsecret", None)
            .get_object()
            .bucket("bucket")
            .key("k")
            .send()
            .await
    );
    assert_eq!((status, code.as_str()), (403, "InvalidToken"));
    let (status, code) = err_of!(
        client_with(&s, "TEMP", "tempsecret", Some("tok-999"))
            .get_object()
            .bucket("bucket")
            .key("k")
            .send()
            .await
    );
    assert_eq!((status, code.as_str()), (403, "InvalidToken"));
    let ok = client_with(&s, "TEMP", "tempsecret", Some("tok-123"));
    assert_eq!(get(&ok, "bucket", "k").await, b"v");
    // A token sent with permanent credentials is invalid too.
    let (_, code) = err_of!(
        client_with(&s, AK, SK, Some("tok-123"))
            .get_object()
            .bucket("bucket")
            .key("k")
            .send()
            .await
    );
    assert_eq!(code, "InvalidToken");

    // Expiry: rotate the same key to an expired entry.
    s.add_credentials(
        "TEMP",
        "tempsecret",
        Some("tok-123"),
        Some(SystemTime::now() - Duration::from_secs(1)),
    );
    let (status, code) = err_of!(ok.get_object().bucket("bucket").key("k").send().await);
    assert_eq!((status, code.as_str()), (400, "ExpiredToken"));
    // Future expiry works, then revocation.
    s.add_credentials(
        "TEMP",
        "tempsecret",
        Some("tok-123"),
        Some(SystemTime::now() + Duration::from_secs(3600)),
    );
    assert_eq!(get(&ok, "bucket", "k").await, b"v");
    s.revoke_credentials("TEMP");
    let (status, code) = err_of!(ok.get_object().bucket("bucket").key("k").send().await);
    assert_eq!((status, code.as_str()), (403, "InvalidAccessKeyId"));

    // Wrong region.
    let wrong = Client::from_conf(
        config(&s, AK, SK, None)
            .region(Region::new("us-east-1"))
            .build(),
    );
    let (status, code) = err_of!(wrong.get_object().bucket("bucket").key("k").send().await);
    assert_eq!(
        (status, code.as_str()),
        (400, "AuthorizationHeaderMalformed")
    );

    // Anonymous request.
    let (status, body) = raw_request(
        s.port(),
        "GET /bucket/k HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 403);
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");

    assert!(s.stats().auth_failures >= 9, "{:?}", s.stats());
}

/// Sends raw HTTP/1.1, returns (status, body).
fn raw_request(port: u16, req: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).unwrap();
    let status = resp.split(' ').nth(1).unwrap().parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sends SDK requests for `http://BUCKET.localhost:PORT/...` to 127.0.0.1:PORT (`*.localhost` may
/// not resolve here), keeping the signed `Host` header.
#[derive(Debug)]
struct ResolveLocalhost;

impl Intercept for ResolveLocalhost {
    fn name(&self) -> &'static str {
        "ResolveLocalhost"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = context.request_mut();
        let uri: hyper::Uri = req.uri().parse()?;
        let authority = uri.authority().ok_or("no authority")?.as_str().to_owned();
        assert!(
            authority.contains(".localhost:"),
            "SDK did not use virtual hosting: {uri}"
        );
        let port = uri.port_u16().ok_or("no port")?;
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        req.headers_mut().insert("host", authority);
        req.set_uri(format!("http://127.0.0.1:{port}{path}"))?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_hosted_style() {
    let s = start();
    s.put_object("bucket", "dir/a b.txt", b"vhost".to_vec());
    s.put_object("bucket", "dir/c", b"c".to_vec());
    let conf = config(&s, AK, SK, None)
        .endpoint_url(format!("http://localhost:{}", s.port()))
        .force_path_style(false)
        .interceptor(ResolveLocalhost)
        .build();
    let c = Client::from_conf(conf);
    assert_eq!(get(&c, "bucket", "dir/a b.txt").await, b"vhost");
    let out = c
        .list_objects_v2()
        .bucket("bucket")
        .prefix("dir/")
        .send()
        .await
        .unwrap();
    assert_eq!(out.contents().len(), 2);
    c.put_object()
        .bucket("bucket")
        .key("new")
        .body(ByteStream::from_static(b"n"))
        .send()
        .await
        .unwrap();
    assert_eq!(s.object_data("bucket", "new").unwrap().as_ref(), b"n");
    let (status, code) = err_of!(c.get_object().bucket("otherbucket").key("x").send().await);
    assert_eq!((status, code.as_str()), (404, "NoSuchBucket"));

    // Unsigned raw request with a virtual host: routed to the bucket (and then denied).
    let (status, body) = raw_request(
        s.port(),
        "GET /dir/c HTTP/1.1\r\nHost: bucket.localhost:1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_copy_multipart_delete() {
    let s = start();
    let c = client(&s);
    c.create_bucket().bucket("second").send().await.unwrap();
    c.head_bucket().bucket("second").send().await.unwrap();
    let (status, _) = err_of!(c.head_bucket().bucket("missing-bucket").send().await);
    assert_eq!(status, 404);
    let names: Vec<String> = c
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .map(|b| b.name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["bucket", "second"]);

    s.put_object("bucket", "src", b"copy me".to_vec());
    c.copy_object()
        .bucket("second")
        .key("dst key")
        .copy_source("bucket/src")
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "second", "dst key").await, b"copy me");

    let part1: Vec<u8> = (0..(5 << 20)).map(|i| (i % 253) as u8).collect();
    let part2 = b"tail".to_vec();
    let up = c
        .create_multipart_upload()
        .bucket("bucket")
        .key("mp")
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let mut parts = Vec::new();
    for (n, p) in [(1, &part1), (2, &part2)] {
        let out = c
            .upload_part()
            .bucket("bucket")
            .key("mp")
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(p.clone()))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag().unwrap())
                .build(),
        );
    }
    let done = c
        .complete_multipart_upload()
        .bucket("bucket")
        .key("mp")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(
        done.e_tag().unwrap().ends_with("-2\""),
        "{:?}",
        done.e_tag()
    );
    let mut expected = part1.clone();
    expected.extend_from_slice(&part2);
    assert_eq!(get(&c, "bucket", "mp").await, expected);
    assert_eq!(s.object_etag("bucket", "mp").as_deref(), done.e_tag());

    let up = c
        .create_multipart_upload()
        .bucket("bucket")
        .key("mp2")
        .send()
        .await
        .unwrap();
    c.abort_multipart_upload()
        .bucket("bucket")
        .key("mp2")
        .upload_id(up.upload_id().unwrap())
        .send()
        .await
        .unwrap();

    s.put_object("bucket", "del/1", b"1".to_vec());
    s.put_object("bucket", "del/2", b"2".to_vec());
    let out = c
        .delete_objects()
        .bucket("bucket")
        .delete(
            aws_sdk_s3::types::Delete::builder()
                .objects(
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key("del/1")
                        .build()
                        .unwrap(),
                )
                .objects(
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key("del/2")
                        .build()
                        .unwrap(),
                )
                .objects(
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key("del/missing")
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(out.deleted().len(), 3);
    assert!(
        s.object_etag("bucket", "del/1").is_none() && s.object_etag("bucket", "del/2").is_none()
    );

    c.delete_object()
        .bucket("bucket")
        .key("src")
        .send()
        .await
        .unwrap();
    assert!(s.object_etag("bucket", "src").is_none());
    let (status, code) = err_of!(c.delete_bucket().bucket("second").send().await);
    assert_eq!((status, code.as_str()), (409, "BucketNotEmpty"));
    c.delete_object()
        .bucket("second")
        .key("dst key")
        .send()
        .await
        .unwrap();
    c.delete_bucket().bucket("second").send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_plan_hook() {
    let s = start();
    let c = client(&s);
    s.put_object("bucket", "big", vec![7u8; 3 << 20]);
    s.set_fault_plan(|r: &RequestInfo| {
        if r.path == "/bucket/slow" {
            FaultAction::SlowDown
        } else if r.path == "/bucket/big" {
            FaultAction::ResetAfter(1000)
        } else {
            FaultAction::None
        }
    });
    let (status, code) = err_of!(c.get_object().bucket("bucket").key("slow").send().await);
    assert_eq!((status, code.as_str()), (503, "SlowDown"));
    let out = c
        .get_object()
        .bucket("bucket")
        .key("big")
        .send()
        .await
        .unwrap();
    assert!(
        out.body.collect().await.is_err(),
        "body should be cut short"
    );
    s.set_fault_plan(NoFaults);
    assert_eq!(get(&c, "bucket", "big").await.len(), 3 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement; run with --ignored --nocapture"]
async fn throughput_single_512mib_get() {
    let s = start();
    let c = client(&s);
    let size = 512usize << 20;
    s.put_object(
        "bucket",
        "big",
        cwfs_testserver::datagen::object_content("big", size),
    );
    for round in 0..3 {
        let t = Instant::now();
        let out = c
            .get_object()
            .bucket("bucket")
            .key("big")
            .send()
            .await
            .unwrap();
        let mut body = out.body;
        let mut n = 0usize;
        while let Some(chunk) = body.next().await {
            n += chunk.unwrap().len();
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(n, size);
        println!(
            "round {round}: 512 MiB GET in {:.3} s = {:.0} MB/s",
            secs,
            size as f64 / secs / 1e6
        );
    }
}

#[test]
fn binary_ready_serve_sigterm() {
    let exe = env!("CARGO_BIN_EXE_cwfs-testserver");
    let dir = std::env::temp_dir().join(format!("cwfs-testserver-bin-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/f.txt"), b"loaded").unwrap();
    // Killed (by PID) and reaped if an assertion fails before the end.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let child = std::process::Command::new(exe)
        .args([
            "--bucket",
            "empty-one",
            "--demo",
            "demo",
            "--objects",
            "bench:small:3:1K",
        ])
        .arg("--load")
        .arg(format!("loaded={}", dir.display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint = line
        .trim()
        .strip_prefix("READY ")
        .expect("READY line")
        .to_owned();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{line}");
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-test-1"))
            .endpoint_url(&endpoint)
            .credentials_provider(Credentials::new(
                "cwfs-test",
                "cwfs-test-secret",
                None,
                None,
                "test",
            ))
            .force_path_style(true)
            .retry_config(RetryConfig::disabled())
            .build();
        let c = Client::from_conf(conf);
        assert_eq!(get(&c, "loaded", "sub/f.txt").await, b"loaded");
        assert_eq!(get(&c, "bench", "small/000002").await.len(), 1024);
        let readme = get(&c, "demo", "README.txt").await;
        assert!(String::from_utf8(readme).unwrap().contains("cwfs demo"));
        assert_eq!(get(&c, "demo", "empty.txt").await.len(), 0);
        let names: Vec<String> = c
            .list_buckets()
            .send()
            .await
            .unwrap()
            .buckets()
            .iter()
            .map(|b| b.name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["bench", "demo", "empty-one", "loaded"]);
    });
    std::fs::remove_dir_all(&dir).unwrap();

    // The port is now taken: a second instance must exit 2.
    let out = std::process::Command::new(exe)
        .args(["--port", &port.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
    let out = std::process::Command::new(exe)
        .args(["--objects", "bad"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(exe)
        .args(["--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "server did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing of listings over 1,000,000 keys; run with --ignored --nocapture"]
async fn listing_one_million_keys() {
    let s = start();
    let c = client(&s);
    let t = Instant::now();
    for d in 0..10 {
        for sub in 0..100 {
            for f in 0..1000 {
                s.put_object(
                    "bucket",
                    &format!("d{d}/sub{sub:02}/f{f:03}"),
                    bytes::Bytes::new(),
                );
            }
        }
    }
    println!("loaded 1,000,000 keys in {:?}", t.elapsed());
    let t = Instant::now();
    let out = c
        .list_objects_v2()
        .bucket("bucket")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    assert_eq!(out.common_prefixes().len(), 10);
    println!("top level (10 prefixes): {:?}", t.elapsed());
    let t = Instant::now();
    let out = c
        .list_objects_v2()
        .bucket("bucket")
        .prefix("d3/")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    assert_eq!(out.common_prefixes().len(), 100);
    println!("d3/ (100 prefixes over 100,000 keys): {:?}", t.elapsed());
    let t = Instant::now();
    let out = c
        .list_objects_v2()
        .bucket("bucket")
        .start_after("d7/sub50/f500")
        .send()
        .await
        .unwrap();
    assert_eq!(out.contents().len(), 1000);
    assert_eq!(out.contents()[0].key(), Some("d7/sub50/f501"));
    println!("1000 keys from the middle: {:?}", t.elapsed());
}

/// The SDK's default checksum behaviour (CRC trailers, aws-chunked uploads) is accepted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_sdk_checksum_settings() {
    let s = start();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(s.region().to_owned()))
        .endpoint_url(s.endpoint())
        .credentials_provider(Credentials::new(AK, SK, None, None, "test"))
        .force_path_style(true)
        .retry_config(RetryConfig::disabled())
        .build();
    let c = Client::from_conf(conf);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    c.put_object()
        .bucket("bucket")
        .key("crc")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(s.object_data("bucket", "crc").unwrap().as_ref(), &data[..]);
    assert_eq!(get(&c, "bucket", "crc").await, data);
    let up = c
        .create_multipart_upload()
        .bucket("bucket")
        .key("crc-mp")
        .send()
        .await
        .unwrap();
    let part = c
        .upload_part()
        .bucket("bucket")
        .key("crc-mp")
        .upload_id(up.upload_id().unwrap())
        .part_number(1)
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap();
    c.complete_multipart_upload()
        .bucket("bucket")
        .key("crc-mp")
        .upload_id(up.upload_id().unwrap())
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(
                    CompletedPart::builder()
                        .part_number(1)
                        .e_tag(part.e_tag().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "bucket", "crc-mp").await, data);
}
