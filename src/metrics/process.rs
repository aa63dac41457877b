//! [`ProcessCollector`]: the standard `process_*` families, as the Go and Python clients
//! export them (RSS, CPU time, start time, file descriptors), read from `/proc/self` at
//! each scrape. Families whose file cannot be read are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

#[derive(Debug)]
pub(super) struct ProcessCollector;

/// One reading of `/proc/self`.
#[derive(Default)]
struct Figures {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

impl Figures {
    fn read() -> Self {
        use procfs::process::{LimitValue, Process};
        use procfs::WithCurrentSystemInfo;

        let Ok(me) = Process::myself() else {
            return Self::default();
        };
        let mut figures = Self::default();
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            figures.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
            figures.resident_bytes = Some(stat.rss_bytes().get() as f64);
            figures.virtual_bytes = Some(stat.vsize as f64);
            figures.start_time_seconds = procfs::boot_time_secs()
                .ok()
                .map(|boot| boot as f64 + stat.starttime as f64 / ticks);
        }
        figures.open_fds = me.fd_count().ok().map(|n| n as f64);
        figures.max_fds = me
            .limits()
            .ok()
            .and_then(|l| match l.max_open_files.soft_limit {
                LimitValue::Value(max) => Some(max as f64),
                LimitValue::Unlimited => None,
            });
        figures
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = Figures::read();
        if let Some(cpu) = figures.cpu_seconds {
            let help = "User and system CPU time";
            encode(
                &mut encoder,
                "process_cpu",
                help,
                Some(Unit::Seconds),
                &ConstCounter::new(cpu),
            )?;
        }
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                figures.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                figures.virtual_bytes,
            ),
            (
                "process_start_time",
                "Start time since the Unix epoch",
                Some(Unit::Seconds),
                figures.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                figures.open_fds,
            ),
            (
                "process_max_fds",
                "Open file descriptors allowed",
                None,
                figures.max_fds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(value) = value {
                encode(&mut encoder, name, help, unit, &ConstGauge::new(value))?;
            }
        }
        Ok(())
    }
}

fn encode(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let metric_encoder =
        encoder.encode_descriptor(name, help, unit.as_ref(), metric.metric_type())?;
    metric.encode(metric_encoder)
}
