//! Choosing the TCTI and recognising software TPMs.

use std::str::FromStr;

use tss_esapi::constants::PropertyTag;
use tss_esapi::{Context, TctiNameConf};

use crate::tpm::error::{classify, TpmError};

/// TCTI used when neither configuration nor environment names one: the kernel's
/// resource manager, so several processes can share the TPM.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// Picks the TCTI string: `configured` if non-empty, else env `TCTI`, else env
/// `TPM2TOOLS_TCTI`, else [`DEFAULT_TCTI`]. Empty values count as unset.
pub fn resolve_tcti(configured: Option<&str>) -> String {
    resolve_tcti_with(configured, |k| std::env::var(k).ok())
}

/// [`resolve_tcti`] with an injectable environment (for tests).
pub fn resolve_tcti_with(configured: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    configured
        .map(str::to_owned)
        .filter(|s| !s.trim().is_empty())
        .or_else(|| env("TCTI").filter(|s| !s.trim().is_empty()))
        .or_else(|| env("TPM2TOOLS_TCTI").filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_TCTI.to_owned())
}

/// Parses a TCTI string (`device:/dev/tpmrm0`, `swtpm:path=/run/swtpm.sock`, ...).
pub fn parse_tcti(tcti: &str) -> Result<TctiNameConf, TpmError> {
    TctiNameConf::from_str(tcti).map_err(|source| TpmError::InvalidTcti {
        tcti: tcti.to_owned(),
        source,
    })
}

/// Identity the TPM reports about itself (TPM_PT_MANUFACTURER, TPM_PT_VENDOR_STRING_1..4,
/// TPM_PT_FIRMWARE_VERSION_1/2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmVendorInfo {
    /// Manufacturer as 4 ASCII bytes, NULs and spaces trimmed (swtpm: "IBM").
    pub manufacturer: String,
    /// Vendor strings concatenated, NULs dropped (swtpm: "SW   TPM").
    pub vendor: String,
    /// Firmware version (high, low).
    pub firmware: (u32, u32),
}

impl TpmVendorInfo {
    /// Whether this looks like a software TPM (swtpm or IBM's simulator: manufacturer
    /// "IBM", vendor "SW   TPM"), whose keys and counters any root user can copy or
    /// reset. Virtual TPMs backed by a hypervisor (e.g. "MSFT", "GOOG") are not flagged.
    pub fn is_software_tpm(&self) -> bool {
        let vendor: String = self
            .vendor
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_uppercase();
        self.manufacturer == "IBM"
            || vendor == "SW TPM"
            || vendor.contains("SWTPM")
            || vendor.contains("SIMULATOR")
    }
}

/// Decodes a TPM property word as up to four ASCII characters.
fn ascii4(word: u32) -> String {
    word.to_be_bytes()
        .iter()
        .filter(|b| **b != 0)
        .map(|b| char::from(*b))
        .collect()
}

/// Reads the manufacturer, vendor strings and firmware version from the TPM.
pub fn read_vendor_info(ctx: &mut Context) -> Result<TpmVendorInfo, TpmError> {
    let mut prop = |tag| {
        ctx.get_tpm_property(tag)
            .map(Option::unwrap_or_default)
            .map_err(|e| classify("TPM2_GetCapability(properties)", e))
    };
    let manufacturer = ascii4(prop(PropertyTag::Manufacturer)?).trim().to_owned();
    let mut vendor = String::new();
    for tag in [
        PropertyTag::VendorString1,
        PropertyTag::VendorString2,
        PropertyTag::VendorString3,
        PropertyTag::VendorString4,
    ] {
        vendor.push_str(&ascii4(prop(tag)?));
    }
    let firmware = (
        prop(PropertyTag::FirmwareVersion1)?,
        prop(PropertyTag::FirmwareVersion2)?,
    );
    Ok(TpmVendorInfo {
        manufacturer,
        vendor: vendor.trim_end().to_owned(),
        firmware,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        let env = |k: &str| match k {
            "TCTI" => Some("swtpm:path=/a".to_owned()),
            "TPM2TOOLS_TCTI" => Some("swtpm:path=/b".to_owned()),
            _ => None,
        };
        assert_eq!(resolve_tcti_with(Some("device:/x"), env), "device:/x");
        assert_eq!(resolve_tcti_with(Some(" "), env), "swtpm:path=/a");
        assert_eq!(
            resolve_tcti_with(None, |k| if k == "TPM2TOOLS_TCTI" {
                Some("b".into())
            } else {
                None
            }),
            "b"
        );
        assert_eq!(
            resolve_tcti_with(None, |_| Some(String::new())),
            DEFAULT_TCTI
        );
    }

    #[test]
    fn swtpm_strings() {
        // Values swtpm 0.7.1 reports (tpm2_getcap properties-fixed).
        let info = TpmVendorInfo {
            manufacturer: ascii4(0x49424D00),
            vendor: ascii4(0x53572020) + &ascii4(0x2054504D),
            firmware: (0x20191023, 0x163636),
        };
        assert_eq!(info.manufacturer, "IBM");
        assert_eq!(info.vendor, "SW   TPM");
        assert!(info.is_software_tpm());
        let hw = TpmVendorInfo {
            manufacturer: "IFX".into(),
            vendor: "SLB9670".into(),
            firmware: (0, 0),
        };
        assert!(!hw.is_software_tpm());
    }
}
