//! MBR/GPT parsing on arbitrary images: a found partition always lies
//! inside the image.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&number, image)) = data.split_first() else {
        return;
    };
    let size = image.len() as u64;
    let mut read_at = |offset: u64, buf: &mut [u8]| -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::Error::from_raw_os_error(5))?;
        let end = start.checked_add(buf.len()).filter(|&e| e <= image.len());
        let end = end.ok_or_else(|| std::io::Error::from_raw_os_error(5))?;
        buf.copy_from_slice(&image[start..end]);
        Ok(())
    };
    if let Ok(part) = toolbox::nbd::partition::find(&mut read_at, size, u32::from(number % 16)) {
        assert!(part
            .offset
            .checked_add(part.length)
            .is_some_and(|end| end <= size));
    }
});
