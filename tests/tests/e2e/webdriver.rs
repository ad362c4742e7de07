//! A real browser for the dashboard test: Debian's headless `chromium`, driven through
//! `chromedriver` (WebDriver) with fantoccini.
//!
//! [`Browser::start`] runs a `chromedriver` of its own on a free port and opens one
//! session; [`Browser::close`] ends both. The programs are `/usr/bin/chromium` and
//! `/usr/bin/chromedriver` (Debian's `chromium` and `chromium-driver`, which
//! `scripts/browser.sh` installs), or `TRIBUTARY_CHROMIUM` / `TRIBUTARY_CHROMEDRIVER`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use tributary_tests::redis_node::free_port;

/// How long chromedriver gets to answer, and a page or an element to appear.
const PATIENCE: Duration = Duration::from_secs(30);

/// Chromium's flags: headless, as root, and no background traffic (this machine's network
/// is closed, and the test must not depend on it).
const CHROMIUM_ARGS: [&str; 11] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,1000",
];

/// A chromedriver process and a session in the Chromium it started.
pub struct Browser {
    pub client: Client,
    _driver: DriverGuard,
}

/// Where a program is: the environment variable if set, else the Debian path.
fn program(var: &str, debian: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(debian), PathBuf::from);
    if !path.exists() {
        bail!(
            "{} not found: install Debian's chromium and chromium-driver \
             (scripts/browser.sh) or set {var}",
            path.display()
        );
    }
    Ok(path)
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start() -> anyhow::Result<Browser> {
        let driver_path = program("TRIBUTARY_CHROMEDRIVER", "/usr/bin/chromedriver")?;
        let chromium = program("TRIBUTARY_CHROMIUM", "/usr/bin/chromium")?;
        let port = free_port()?;
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", driver_path.display()))?;
        let driver = DriverGuard(driver);
        let capabilities = json!({
            "goog:chromeOptions": { "binary": chromium, "args": CHROMIUM_ARGS },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        let client = loop {
            let connected = ClientBuilder::rustls()?
                .capabilities(capabilities.clone())
                .connect(&webdriver)
                .await;
            match connected {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => {
                    return Err(e).context("chromedriver gave no browser session");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Ok(Browser {
            client,
            _driver: driver,
        })
    }

    /// Opens `url` and waits for its document.
    pub async fn open(&self, url: &str) -> anyhow::Result<()> {
        within(&format!("opening {url}"), self.client.goto(url)).await
    }

    /// The path of the page the browser shows.
    pub async fn path(&self) -> anyhow::Result<String> {
        let url = within("reading the URL", self.client.current_url()).await?;
        Ok(url.path().to_string())
    }

    /// The text of the first element matching `css`, waiting for it to appear.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let element = self.find(css).await?;
        within(&format!("reading {css}"), element.text()).await
    }

    /// The first element matching `css`, waiting up to [`PATIENCE`] for it to appear.
    pub async fn find(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        let wait = self.client.wait().at_most(PATIENCE);
        within(
            &format!("no element {css}"),
            wait.for_element(Locator::Css(css)),
        )
        .await
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        within(&format!("clicking {css}"), element.click()).await?;
        Ok(())
    }

    /// Types `text` into the field matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = within(css, self.client.find(Locator::Css(css))).await?;
        within(&format!("typing into {css}"), element.send_keys(text)).await
    }

    /// Waits until `check` holds for the text of `css` (the page is not reloaded: this only
    /// reads the live document), or fails with the last text seen.
    pub async fn wait_text(
        &self,
        css: &str,
        limit: Duration,
        check: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.text(css).await?;
            if check(&text) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                bail!("{css} still reads {text:?} after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs a script in the page and returns its value.
    pub async fn script(&self, js: &str) -> anyhow::Result<serde_json::Value> {
        within(js, self.client.execute(js, Vec::new())).await
    }

    /// The page's HTML as the browser holds it now.
    pub async fn source(&self) -> anyhow::Result<String> {
        within("reading the page", self.client.source()).await
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        within("a screenshot", self.client.screenshot()).await
    }

    /// Ends the session and stops chromedriver.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client
            .close()
            .await
            .context("closing the browser session")
    }
}

/// `call`, given [`PATIENCE`] to answer (a WebDriver command can otherwise wait forever).
async fn within<T, E>(what: &str, call: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(PATIENCE + Duration::from_secs(5), call).await {
        Ok(answer) => answer.with_context(|| what.to_string()),
        Err(_) => bail!("{what}: no answer from the browser within {PATIENCE:?}"),
    }
}

/// chromedriver, killed when dropped (its Chromium quits with the session, or with
/// chromedriver's end), whether or not a session ever opened.
struct DriverGuard(Child);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
